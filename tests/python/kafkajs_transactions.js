// KafkaJS transactional producer (its own transactions code): three
// transactions of COUNT records each to partition 0 of TOPIC; the first and
// third commit, the second aborts (after its records were acknowledged).
// Prints one JSON line, {"transactions": [{"outcome": "commit"|"abort",
// "values": [...]}, ...]} in the order they ran, and exits 0 (else exit 1).
// Usage: node kafkajs_transactions.js BOOTSTRAP TOPIC TRANSACTIONAL_ID COUNT
const { Kafka, logLevel } = require("kafkajs");

const [bootstrap, topic, transactionalId, countText] = process.argv.slice(2);
const count = Number(countText);
const kafka = new Kafka({
  clientId: "tributary-kafkajs-txn-test",
  brokers: [bootstrap],
  logLevel: logLevel.WARN,
});

async function main() {
  const producer = kafka.producer({ transactionalId, idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  const transactions = [];
  for (const [n, outcome] of ["commit", "abort", "commit"].entries()) {
    const values = [];
    for (let i = 0; i < count; i++) values.push(`kafkajs-txn-${n}-rec-${i}`);
    const transaction = await producer.transaction();
    await transaction.send({
      topic,
      messages: values.map((value, i) => ({ key: `k${i}`, value, partition: 0 })),
    });
    if (outcome === "commit") await transaction.commit();
    else await transaction.abort();
    transactions.push({ outcome, values });
  }
  await producer.disconnect();
  console.log(JSON.stringify({ transactions }));
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
