// One side of the "events" benchmark for Moleculer: a node emits an event over the MQTT
// transporter (QoS 1, MQTT 5) to another node's handler. Same protocol as ../py_peer.py:
//   node peer.js publish|consume --url mqtt://127.0.0.1:1883 --topic T -n N --warmup W
//        --window K --rate R --feedback PORT --every E
// Latency clock: process.hrtime (CLOCK_MONOTONIC, as Python's time.monotonic()).
"use strict";

const dgram = require("dgram");
const readline = require("readline");
const { ServiceBroker } = require("moleculer");

const ORDER_ID = "o-20261130-000042";
const EMAIL = "someone@example.com";
const NOTE = "gift wrap: no; deliver to the back door, ring twice, or leave it with the neighbours; thanks";

function parse(argv) {
	const args = { role: argv[0], warmup: 200, window: 100, rate: 0, every: 20 };
	for (let i = 1; i < argv.length; i += 2) args[argv[i].replace(/^-+/, "")] = argv[i + 1];
	for (const k of ["n", "warmup", "window", "rate", "feedback", "every"]) args[k] = Number(args[k]);
	return args;
}

const now = () => Number(process.hrtime.bigint()) / 1e9;
const say = text => process.stdout.write(text + "\n");
const lines = readline.createInterface({ input: process.stdin });
const queued = [];
let waiting = null;
lines.on("line", l => (waiting ? (waiting(l), (waiting = null)) : queued.push(l)));
lines.on("close", () => (waiting ? waiting(null) : queued.push(null)));
const line = () => (queued.length ? Promise.resolve(queued.shift()) : new Promise(r => (waiting = r)));

function makeBroker(args, nodeID) {
	const url = new URL(args.url);
	return new ServiceBroker({
		nodeID,
		namespace: args.topic,
		logger: false,
		transporter: {
			type: "MQTT",
			options: { host: url.hostname, port: Number(url.port || 1883), qos: 1, protocolVersion: 5 }
		}
	});
}

async function consume(args) {
	const sock = dgram.createSocket("udp4");
	const seen = new Set();
	const latencies = [];
	let count = 0, measured = 0, first = 0, last = 0, duplicates = 0, finish;
	const finished = new Promise(r => (finish = r));
	const broker = makeBroker(args, `consumer-${process.pid}`);
	broker.createService({
		name: "sink",
		events: {
			"bench.placed"(ctx) {
				const t = now();
				const e = ctx.params;
				const key = e.w ? -e.seq - 1 : e.seq;
				if (seen.has(key)) return void duplicates++;
				seen.add(key);
				count++;
				if (!e.w) {
					if (!measured) first = t;
					measured++;
					last = t;
					latencies.push((t - e.t) * 1000);
				}
				if (count % args.every === 0 || count === args.warmup || measured === args.n)
					sock.send(String(count), args.feedback, "127.0.0.1");
				if (measured === args.n) finish();
			}
		}
	});
	await broker.start();
	say("ready");
	await finished;
	say("done " + JSON.stringify({ latencies_ms: latencies, first, last, duplicates }));
	await line();
	await broker.stop();
	sock.close();
}

async function publish(args) {
	const sock = dgram.createSocket("udp4");
	let handled = 0, wake = null;
	sock.on("message", m => {
		handled = Math.max(handled, Number(m.toString()));
		if (wake) wake(), (wake = null);
	});
	await new Promise(r => sock.bind(args.feedback, "127.0.0.1", r));
	const below = async (sent, window) => {
		while (sent - handled >= window) await new Promise(r => (wake = r));
	};
	const broker = makeBroker(args, `publisher-${process.pid}`);
	await broker.start();
	await broker.waitForServices(["sink"], 30000);
	let errors = 0;
	const pending = new Set();
	const send = (seq, t, w) => {
		const p = broker.emit("bench.placed", { seq, t, w, order_id: ORDER_ID, email: EMAIL, note: NOTE });
		if (p && p.then) {
			const q = p.catch(() => errors++).finally(() => pending.delete(q));
			pending.add(q);
		}
	};
	say("ready");
	await line();
	for (let seq = 0; seq < args.warmup; seq++) {
		await below(seq, args.window);
		send(seq, now(), 1);
	}
	await below(args.warmup, 1);
	say("warmed");
	await line();
	const start = now();
	const cap = args.window * 10;
	for (let i = 0; i < args.n; i++) {
		let due;
		if (args.rate) {
			due = start + i / args.rate;
			const delay = due - now();
			if (delay > 0) await new Promise(r => setTimeout(r, delay * 1000));
			await below(args.warmup + i, cap);
		} else {
			await below(args.warmup + i, args.window);
			due = now();
		}
		send(i, due, 0);
	}
	await Promise.all([...pending]);
	say("sent " + JSON.stringify({ start, errors }));
	await line();
	await broker.stop();
	sock.close();
}

const args = parse(process.argv.slice(2));
(args.role === "consume" ? consume(args) : publish(args)).then(
	() => process.exit(0),
	err => {
		process.stderr.write(String((err && err.stack) || err) + "\n");
		process.exit(1);
	}
);
