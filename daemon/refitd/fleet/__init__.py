"""The MQTT fleet channel: desired state, content-addressed chunk transfer, presence and status,
weight servers and the operator's push/rollout/status (docs/mqtt.md).

Modules: ``topics`` (the fixed topic names), ``manifest`` (desired state and the transfer
manifest), ``wire`` (request/response framing), ``link`` (the paho-mqtt client: TLS,
credentials, reason codes, backoff), ``server`` (weight server), ``transfer`` (the device's
resumable download), ``device`` (the daemon's MQTT channel), ``operator`` (push, rollout, fleet
status), ``settings`` (the ``mqtt`` config section)."""
