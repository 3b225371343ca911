//! An embedded Kafka for development and tests: librdkafka's mock cluster, speaking the real
//! protocol on loopback ports, with tracefold's topics created from their definitions.

use crate::config::TopicsConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

/// A running mock cluster. It lives as long as this value, on the thread that made it.
pub struct DevBroker {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl DevBroker {
    /// Starts `brokers` mock brokers and creates the configured topics with the default
    /// partition counts of `schemas/topics.toml` (or `partitions` when given).
    ///
    /// # Errors
    /// When librdkafka cannot create the cluster or a topic.
    pub fn start(brokers: i32, topics: &TopicsConfig, partitions: Option<i32>) -> anyhow::Result<Self> {
        let cluster = MockCluster::new(brokers).map_err(|e| anyhow::anyhow!("cannot start the mock cluster: {e}"))?;
        for def in crate::topics::configured(topics) {
            let n = if def.role == "dlq" { def.partitions } else { partitions.unwrap_or(def.partitions) };
            cluster
                .create_topic(&def.name, n, 1)
                .map_err(|e| anyhow::anyhow!("cannot create topic {}: {e}", def.name))?;
        }
        Ok(Self { cluster })
    }

    /// `host:port,...` to give clients.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// The underlying mock cluster, for fault injection in tests.
    pub fn cluster(&self) -> &MockCluster<'static, DefaultProducerContext> {
        &self.cluster
    }
}
