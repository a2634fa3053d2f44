"""Destinations of the outbox forwarder (:mod:`qcstation.station.outbox`): MQTT, webhooks, a central store."""
