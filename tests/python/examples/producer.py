import json
from confluent_kafka import Producer
conf = {'bootstrap.servers': 'localhost:9092'}
producer = Producer(conf)
data = {'id': 1, 'name': 'Alice', 'amount': 100.5}
producer.produce('example_topic', key=str(data['id']), value=json.dumps(data))
producer.flush()
print("Message sent:", data)
