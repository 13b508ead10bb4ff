// Broker options shared by the Moleculer service and its caller (benchmarks/remote_hop.py).
"use strict";

const { ServiceBroker } = require("moleculer");

// transport: "tcp" or "mqtt"; port: this node's TCP port; peers: "host:port/nodeID" of the others.
function broker({ nodeID, transport, namespace, port, peers, mqttUrl }) {
	const transporter =
		transport === "tcp"
			? { type: "TCP", options: { udpDiscovery: false, port, urls: peers } }
			: { type: "MQTT", options: { url: mqttUrl } };
	return new ServiceBroker({
		namespace,
		nodeID,
		transporter,
		logger: false, // stdout carries the JSON results only
		requestTimeout: 10000,
		metrics: false,
		tracing: false,
	});
}

function options(argv) {
	const result = {};
	for (let i = 2; i < argv.length; i += 2) result[argv[i].replace(/^--/, "")] = argv[i + 1];
	return result;
}

module.exports = { broker, options };
