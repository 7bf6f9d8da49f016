//! Checks on a model being created (`POST /v1/models`) that are not about
//! its shape: its aggregation settings from a query string, and whether a
//! trainer could ever send it one update.

use std::collections::HashMap;

use crate::aggregation::AggregationOverrides;
use crate::config::HubConfig;
use crate::error::ApiError;
use crate::hub::ws::{Budget, Claim};
use crate::protocol::{ErrorCode, ModelLayout};

/// Aggregation keys given in a query string, typed as the config types them.
pub fn overrides_from_query(q: &HashMap<String, String>) -> Result<AggregationOverrides, ApiError> {
    let mut map = serde_json::Map::new();
    for (k, v) in q {
        let value = v
            .parse::<i64>()
            .map(serde_json::Value::from)
            .or_else(|_| v.parse::<f64>().map(serde_json::Value::from))
            .unwrap_or_else(|_| serde_json::Value::String(v.clone()));
        map.insert(k.clone(), value);
    }
    let o: AggregationOverrides = crate::config::from_map_naming_key(map)
        .map_err(|e| ApiError::bad_request(format!("bad aggregation settings: {e}")))?;
    o.validate()
        .map_err(|e| ApiError::bad_request(format!("aggregation.{e}")))?;
    Ok(o)
}

/// The largest message a trainer connection may send: the smaller of
/// `hub.max_message_bytes` and its share of the in-flight budget, what the
/// welcome says as `max_message_bytes`.
pub fn max_update_bytes(cfg: &HubConfig, budget: &Budget) -> usize {
    let share = Claim::new(budget.clone(), cfg.max_inflight_share).share_bytes();
    cfg.max_message_bytes.min(share)
}

/// Bytes of one uncompressed update of `layout` as safetensors, at most:
/// the tensors (floats as F32, or F64 for an F64 tensor; integers as I64),
/// and a header of at most 96 bytes per tensor besides its (JSON-escaped)
/// name and 21 per dimension.
pub fn full_update_bytes(layout: &ModelLayout) -> usize {
    let header: usize = layout
        .tensors
        .iter()
        .map(|t| 96 + t.name.len() * 6 + t.shape.len() * 21)
        .sum();
    let width = |t: &crate::protocol::TensorSpec| match t.is_integer() {
        true => 8,
        false => t.tensor_dtype().width().max(4),
    };
    let data = layout
        .tensors
        .iter()
        .map(|t| t.numel().saturating_mul(width(t)));
    16 + header + data.fold(0usize, usize::saturating_add)
}

/// Refuses a model no trainer could ever send one full update of: without
/// this it is created, and every update is then refused `message_too_large`
/// (issue 20 saw a 169 MB model resent for minutes).
pub fn update_fits(layout: &ModelLayout, cfg: &HubConfig, budget: &Budget) -> Result<(), ApiError> {
    let need = full_update_bytes(layout);
    let limit = max_update_bytes(cfg, budget);
    if need <= limit {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::UpdateOverLimit,
        format!(
            "one float32 update of this model is about {need} bytes ({} parameters), and a trainer \
             may send at most {limit}: the smaller of hub.max_message_bytes ({}) and \
             hub.max_inflight_update_bytes ({}) × hub.max_inflight_share ({}). Raise those \
             (max_inflight_update_bytes needs a restart) or make the model smaller",
            layout.num_params(),
            cfg.max_message_bytes,
            budget.bytes(),
            cfg.max_inflight_share
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_covers_the_encoded_update() {
        let layout = ModelLayout::new(vec![
            ("a.weight".into(), vec![3, 4]),
            ("a.bias\"quoted\"".into(), vec![4]),
            ("s".into(), vec![1]),
        ]);
        let bytes = layout.encode(&[0.0; 17], None).unwrap().len();
        let bound = full_update_bytes(&layout);
        assert!(bytes <= bound && bound < bytes + 400, "{bytes} {bound}");
    }
}
