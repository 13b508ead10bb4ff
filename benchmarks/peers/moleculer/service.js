// The currency service: convert(amount: Money{currency, units, nanos}, to) -> Money.
// node service.js --transport tcp|mqtt --namespace NS --port P --peers host:port/caller --mqtt URL
"use strict";

const { broker, options } = require("./common");

const RATES = { EUR: 1, USD: 2 };
const args = options(process.argv);
const node = broker({
	nodeID: "currency-server",
	transport: args.transport,
	namespace: args.namespace,
	port: Number(args.port || 0),
	peers: args.peers ? args.peers.split(",") : [],
	mqttUrl: args.mqtt,
});

node.createService({
	name: "currency",
	actions: {
		convert(ctx) {
			const { amount, to } = ctx.params;
			return {
				currency: to,
				units: Math.floor((amount.units * RATES[to]) / RATES[amount.currency]),
				nanos: amount.nanos,
			};
		},
	},
});

node.start().then(() => process.stdout.write(JSON.stringify({ event: "ready", pid: process.pid }) + "\n"));
process.on("SIGTERM", () => node.stop().then(() => process.exit(0)));
