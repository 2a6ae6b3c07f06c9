from confluent_kafka import Consumer
import json
conf = {'bootstrap.servers': 'localhost:9092', 'group.id': 'example_group', 'auto.offset.reset': 'earliest'}
consumer = Consumer(conf)
consumer.subscribe(['example_topic'])
msg = consumer.poll(timeout=1.0)
if msg and not msg.error():
    print("Received:", json.loads(msg.value().decode('utf-8')))
consumer.close()
