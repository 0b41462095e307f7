//! MQTT sources: device brokers the agent subscribes to (Sparkplug B edge nodes).

pub(crate) mod sparkplug;
