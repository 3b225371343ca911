//! Broker faults, injected as librdkafka's own tests do (the mock cluster's request errors,
//! broker down and up, partition leader moves), during a load: every fault fires and the
//! counts in ClickHouse stay exact.
