// KafkaJS over SASL_SSL/SCRAM-SHA-512: produce COUNT records to TOPIC,
// read them back in a group, print "ok N" and exit 0 (else exit 1).
// Usage: node kafkajs_roundtrip.js BOOTSTRAP CA_FILE TOPIC COUNT
const fs = require("fs");
const { Kafka, logLevel } = require("kafkajs");

const [bootstrap, caFile, topic, countText] = process.argv.slice(2);
const count = Number(countText);
const kafka = new Kafka({
  clientId: "tributary-kafkajs-test",
  brokers: [bootstrap],
  ssl: { ca: [fs.readFileSync(caFile, "utf-8")] },
  sasl: { mechanism: "scram-sha-512", username: "alice", password: "alice-secret" },
  logLevel: logLevel.WARN,
});

async function main() {
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ topics: [{ topic, numPartitions: 1 }] });
  await admin.disconnect();
  const producer = kafka.producer();
  await producer.connect();
  const messages = [];
  for (let i = 0; i < count; i++) messages.push({ key: `k${i}`, value: `v${i}` });
  await producer.send({ topic, acks: -1, messages });
  await producer.disconnect();
  const consumer = kafka.consumer({ groupId: topic });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const seen = [];
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`only ${seen.length} of ${count} records`)), 30000);
    consumer.run({
      eachMessage: async ({ message }) => {
        seen.push(message.value.toString());
        if (seen.length >= count) {
          clearTimeout(timer);
          resolve();
        }
      },
    });
  });
  await consumer.disconnect();
  for (let i = 0; i < count; i++) {
    if (seen[i] !== `v${i}`) throw new Error(`record ${i} is ${seen[i]}`);
  }
  console.log(`ok ${seen.length}`);
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
