// The caller: the same protocol as remote_hop.py's Python callers, JSON lines on stdout.
// 1. warm-up, then `calls` sequential calls: {"event": "sequential", "samples_ms": [...], ...}
// 2. waits for a line on stdin (the benchmark reads the server's CPU), then `concurrency` callers
//    x `per-caller` calls, closed loop: {"event": "concurrent", "elapsed_s", "cpu_s", "rss_mb", ...}
"use strict";

const readline = require("node:readline");
const { broker, options } = require("./common");

const args = options(process.argv);
const node = broker({
	nodeID: "currency-caller",
	transport: args.transport,
	namespace: args.namespace,
	port: Number(args.port || 0),
	peers: args.peers ? args.peers.split(",") : [],
	mqttUrl: args.mqtt,
});
const params = { amount: { currency: "EUR", units: 1234, nanos: 5 }, to: "USD" };
let errors = 0;
let firstError = null;

async function call() {
	try {
		await node.call("currency.convert", params);
	} catch (error) {
		errors += 1;
		if (firstError === null) firstError = String(error && error.stack ? error.stack : error);
	}
}

function emit(record) {
	process.stdout.write(JSON.stringify(record) + "\n");
}

function nextLine() {
	return new Promise((resolve) => {
		const lines = readline.createInterface({ input: process.stdin });
		lines.once("line", (line) => {
			lines.close();
			resolve(line);
		});
	});
}

async function main() {
	const calls = Number(args.calls);
	const concurrency = Number(args.concurrency);
	const perCaller = Number(args["per-caller"]);
	await node.start();
	await node.waitForServices(["currency"], 30000);
	for (let i = 0; i < Number(args.warmup); i++) await call();
	errors = 0;
	const samples = [];
	for (let i = 0; i < calls; i++) {
		const started = process.hrtime.bigint();
		await call();
		samples.push(Number(process.hrtime.bigint() - started) / 1e6);
	}
	emit({ event: "sequential", samples_ms: samples, errors, first_error: firstError });
	await nextLine();
	errors = 0;
	const cpu = process.cpuUsage();
	const started = process.hrtime.bigint();
	const loop = async () => {
		for (let i = 0; i < perCaller; i++) await call();
	};
	await Promise.all(Array.from({ length: concurrency }, loop));
	const elapsed = Number(process.hrtime.bigint() - started) / 1e9;
	const used = process.cpuUsage(cpu);
	emit({
		event: "concurrent",
		calls: concurrency * perCaller,
		elapsed_s: elapsed,
		cpu_s: (used.user + used.system) / 1e6,
		rss_mb: process.resourceUsage().maxRSS / 1024,
		errors,
		first_error: firstError,
	});
	await node.stop();
}

main().catch((error) => {
	emit({ event: "failed", error: String(error && error.stack ? error.stack : error) });
	process.exit(1);
});
