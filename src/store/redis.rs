//! The Redis store (placeholder until it is written).

use super::StoreError;
use crate::config::StoreConfig;

pub struct RedisStore;

impl RedisStore {
    pub async fn connect(_config: &StoreConfig) -> Result<RedisStore, StoreError> {
        Err(StoreError::Unavailable(
            "the redis store is not built yet".into(),
        ))
    }
}
// TEMPORARY-SCAFFOLD
