//! `pool` and `prealloc`: the per-image pools of machines kept ready for jobs.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use serde::Serialize;
use serde_json::Value;

use super::ApiState;
use super::request::{Params, all_digits, refuse, small_body};
use super::status::{self, ApiError, Nothing};
use crate::labs::SafeName;
use crate::model::{Machine, PoolTarget, PoolView};

#[derive(Serialize)]
struct Pools {
    /// Pool name → ids of all its machines and of the free ones.
    pools: BTreeMap<String, PoolView>,
}

/// `GET /pool/KEY/`: every pool.
pub async fn all_pools(
    State(api): State<Arc<ApiState>>,
    Params(key): Params<String>,
) -> Result<Response, ApiError> {
    api.keys.check(&key)?;
    let pools = api.app.store.pools().await?;
    Ok(status::ok(status::OBTAINED_ALL_POOLS, Pools { pools }))
}

/// `GET /pool/KEY/IMAGE/`: one pool, or "Pool not found" with every pool (as Tango did).
pub async fn one_pool(
    State(api): State<Arc<ApiState>>,
    Params((key, image)): Params<(String, String)>,
) -> Result<Response, ApiError> {
    api.keys.check(&key)?;
    let mut pools = api.app.store.pools().await?;
    match pools.remove(&image) {
        Some(pool) => Ok(status::ok(
            status::OBTAINED_POOL,
            Pools {
                pools: BTreeMap::from([(image, pool)]),
            },
        )),
        None => Ok(status::failed(status::POOL_NOT_FOUND, Pools { pools })),
    }
}

/// `POST /prealloc/KEY/IMAGE/NUM/` with an optional JSON body `{"vmms", "cores", "memory"}`:
/// asks for NUM machines of IMAGE to be kept ready. It records the target in the store; the
/// manager(s) grow or shrink the pool.
pub async fn prealloc(
    State(api): State<Arc<ApiState>>,
    Params((key, image, num)): Params<(String, String, String)>,
    body: Body,
) -> Result<Response, ApiError> {
    if !all_digits(&num) {
        return Err(refuse(body, ApiError::NotFound)); // Tango's route demanded digits
    }
    // The key before the body: a stranger's body is never read.
    if let Err(e) = api.keys.check(&key) {
        return Err(refuse(body, e));
    }
    let body = small_body(body, "prealloc").await?;
    let config = &api.app.config;
    let Ok(size) = num.parse::<u32>() else {
        return Err(ApiError::Failed(status::INVALID_PREALLOC_SIZE.into()));
    };
    let shape = Shape::parse(&body).map_err(ApiError::Request)?;
    SafeName::new("image", &image)?;
    if !api.images.contains(api.app.vmms.as_ref(), &image).await? {
        return Err(ApiError::Failed(status::INVALID_IMAGE.into()));
    }
    // Python used the body's cores and memory only when both were given.
    let (cores, memory) = match shape {
        Some(Shape { cores, memory }) => (cores, memory),
        None => (
            config.limits.cores,
            match config.limits.memory_mb {
                0 => None,
                mb => Some(mb),
            },
        ),
    };
    let pool = Machine::pool_name(&image);
    let target = PoolTarget {
        image,
        vmms: config.vmms.name.clone(),
        size,
        cores,
        memory,
    };
    api.app
        .store
        .set_pool_target(&pool, &target)
        .await
        .map_err(|e| ApiError::Failed(format!("{}: {e}", status::PREALLOC_FAILED)))?;
    // A manager in this process acts at once; one waiting later finds the stored permit.
    api.app.pools_changed.notify_waiters();
    api.app.pools_changed.notify_one();
    tracing::info!(pool, size, "pool target set");
    Ok(status::ok(status::PREALLOCATED, Nothing {}))
}

/// The machine shape a prealloc body asks for.
#[derive(Debug, PartialEq)]
struct Shape {
    cores: Option<f64>,
    memory: Option<u64>,
}

impl Shape {
    /// `None` for an empty body (defaults) or one without both `cores` and `memory`.
    fn parse(body: &[u8]) -> Result<Option<Shape>, String> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| format!("Invalid JSON in the prealloc body: {e}"))?;
        let Value::Object(vm) = value else {
            return Err("The prealloc body must be a JSON object like {\"vmms\": \"localDocker\", \"cores\": 1, \"memory\": 512}".into());
        };
        let (Some(cores), Some(memory)) = (vm.get("cores"), vm.get("memory")) else {
            return Ok(None);
        };
        let cores = match cores {
            Value::Null => None,
            Value::Number(n) => match n.as_f64() {
                Some(c) if c.is_finite() && c > 0.0 => Some(c),
                _ => return Err("cores must be a positive number".into()),
            },
            _ => return Err("cores must be a positive number".into()),
        };
        let memory = match memory {
            Value::Null => None,
            Value::Number(n) => match n.as_u64() {
                Some(0) => None,
                Some(mb) => Some(mb),
                None => return Err("memory must be a whole number of MiB".into()),
            },
            _ => return Err("memory must be a whole number of MiB".into()),
        };
        Ok(Some(Shape { cores, memory }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_or_partial_bodies_mean_defaults() {
        assert_eq!(Shape::parse(b""), Ok(None));
        assert_eq!(Shape::parse(b"  \n"), Ok(None));
        assert_eq!(Shape::parse(b"{\"vmms\": \"localDocker\"}"), Ok(None));
        assert_eq!(Shape::parse(b"{\"cores\": 2}"), Ok(None));
    }

    #[test]
    fn cores_and_memory_together() {
        assert_eq!(
            Shape::parse(b"{\"vmms\": \"localDocker\", \"cores\": 2, \"memory\": 512}"),
            Ok(Some(Shape {
                cores: Some(2.0),
                memory: Some(512)
            }))
        );
        assert!(Shape::parse(b"{\"cores\": \"two\", \"memory\": 512}").is_err());
        assert!(Shape::parse(b"{\"cores\": 1, \"memory\": 1.5}").is_err());
        assert!(Shape::parse(b"[]").is_err());
        assert!(Shape::parse(b"{").is_err());
    }
}
