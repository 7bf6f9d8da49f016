//! Models: list, create, describe, and rollback. Their versions,
//! checkpoints and evaluations are in [`super::versions`].

use std::collections::HashMap;

use actix_web::{get, post, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

use super::admin::{AdminAuth, AdminRefusals};
use super::common::{parse_json, read_body, refusal, unknown_model, Created, JSON_LIMIT};
use super::create_checks::{self, overrides_from_query};
use super::state::AppState;
use crate::aggregation::{AggregationOverrides, Strategy};
use crate::error::{ApiError, ErrorBody};
use crate::hub::hub_actor::{self, ModelStatus, RolledBack};
use crate::hub::state::{NormState, Waiting};
use crate::model::MlpSpec;
use crate::protocol::{ErrorCode, ModelLayout, Normalisation, StatsPool};

/// One line of `GET /v1/models`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ModelSummary {
    pub name: String,
    pub architecture: String,
    pub version: u64,
    pub num_params: usize,
    pub strategy: Strategy,
    pub connected_trainers: usize,
    pub waiting: Waiting,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ModelsList {
    pub models: Vec<ModelSummary>,
}

/// Models with current version, strategy and connected trainers.
#[utoipa::path(
    tag = "models",
    responses(
        (status = 200, description = "Every model", body = ModelsList),
        (status = 503, description = "The hub is unavailable", body = ErrorBody),
    )
)]
#[get("/v1/models")]
pub async fn list_models(st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let s = st.hub.send(hub_actor::GetStatus).await?;
    let models = s
        .models
        .into_iter()
        .map(|m| ModelSummary {
            strategy: m.settings.strategy,
            name: m.name,
            architecture: m.architecture,
            version: m.version,
            num_params: m.num_params,
            connected_trainers: m.connected_trainers,
            waiting: m.waiting,
        })
        .collect();
    Ok(HttpResponse::Ok().json(ModelsList { models }))
}

/// Body of `POST /v1/models` as JSON: the built-in MLP or a flat model.
/// Uploading initial weights instead is an `application/octet-stream`
/// safetensors body with `?name=` (and aggregation keys) in the query.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateModelRequest {
    /// 1 to 64 characters of `A-Z a-z 0-9 _ - .`
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    pub name: String,
    /// `mlp` (the default; `digits` is the same network) or `flat` (one
    /// tensor of `params` zeros).
    #[serde(default)]
    pub architecture: Option<Architecture>,
    /// Input features of the MLP (default 64).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub inputs: Option<usize>,
    /// Hidden units of the MLP (default 64).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub hidden: Option<usize>,
    /// Classes of the MLP (default 10, at least 2).
    #[serde(default)]
    #[schema(minimum = 2)]
    pub classes: Option<usize>,
    /// Seed of the deterministic initial weights (default 42).
    #[serde(default)]
    pub seed: Option<u64>,
    /// Parameters of a `flat` model (at least 1).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub params: Option<u64>,
    /// Aggregation settings overriding the hub's defaults for this model.
    #[serde(default)]
    pub aggregation: Option<AggregationOverrides>,
    /// Input normalisation of an MLP: `"federated"` (the default: trainers
    /// report feature statistics, the hub pools and freezes them), `"off"`,
    /// or fixed statistics `{"mean": [...], "std": [...]}`, one per input.
    #[serde(default)]
    pub normalisation: Option<NormalisationRequest>,
}

/// How a new model's inputs are normalised.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum NormalisationRequest {
    Mode(NormalisationMode),
    Given(GivenNormalisation),
}

#[derive(Deserialize, Clone, Copy, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NormalisationMode {
    Federated,
    Off,
}

/// Statistics an administrator already has: one mean and one standard
/// deviation (> 0) per input.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GivenNormalisation {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

/// The stored normalisation of a new model with `features` inputs.
fn normalisation_for(
    req: Option<NormalisationRequest>,
    features: Option<usize>,
) -> Result<NormState, ApiError> {
    match (req, features) {
        (None | Some(NormalisationRequest::Mode(NormalisationMode::Off)), _)
            if features.is_none() =>
        {
            Ok(NormState::Off)
        }
        (Some(NormalisationRequest::Mode(NormalisationMode::Off)), _) => Ok(NormState::Off),
        (_, None) => Err(ApiError::bad_request(
            "normalisation: only an MLP model has inputs to normalise",
        )),
        (None | Some(NormalisationRequest::Mode(NormalisationMode::Federated)), Some(f)) => {
            Ok(NormState::Pooling {
                pool: StatsPool::new(f),
            })
        }
        (Some(NormalisationRequest::Given(g)), Some(f)) => Normalisation::given(g.mean, g.std, f)
            .map(|normalisation| NormState::Frozen { normalisation })
            .map_err(ApiError::bad_request),
    }
}

/// The built-in networks `POST /v1/models` can create.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Mlp,
    Digits,
    Flat,
}

/// Create a model (admin): JSON for the built-in MLP or a flat model, or a
/// safetensors body (`Content-Type: application/octet-stream`) with
/// `?name=` and any aggregation key in the query string.
#[utoipa::path(
    tag = "models",
    security(("adminToken" = [])),
    params(
        ("name" = Option<String>, Query, description = "Model name, for a safetensors body"),
    ),
    request_body(
        description = "JSON description, or initial weights as safetensors",
        content(
            (CreateModelRequest = "application/json"),
            (Vec<u8> = "application/octet-stream"),
        )
    ),
    responses(
        (status = 201, description = "Created at version 0", body = Created),
        (status = 400, description = "Bad body, name, shape or setting (the message names it)", body = ErrorBody),
        AdminRefusals,
        (status = 409, description = "A model of that name exists, or the hub has `hub.max_models`", body = ErrorBody),
        (status = 413, description = "Body over its limit", body = ErrorBody),
        (status = 503, description = "The hub is unavailable", body = ErrorBody),
    )
)]
#[post("/v1/models")]
pub async fn create_model(
    req: HttpRequest,
    st: web::Data<AppState>,
    q: web::Query<HashMap<String, String>>,
    payload: web::Payload,
    _admin: AdminAuth,
) -> Result<HttpResponse, ApiError> {
    let hub_cfg = st.hub_config()?;
    let max_params = hub_cfg.max_model_params;
    let too_large = |n: Option<u64>| {
        ApiError::new(
            ErrorCode::ModelTooLarge,
            format!(
                "the model would have {} parameters; the limit (hub.max_model_params) is {max_params}",
                n.map(|n| n.to_string()).unwrap_or_else(|| "more than 2^64".into())
            ),
        )
    };
    let ctype = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut query = q.into_inner();
    let msg = if ctype.starts_with("application/octet-stream") {
        let name = query
            .remove("name")
            .ok_or_else(|| ApiError::bad_request("query parameter `name` is required"))?;
        crate::protocol::validate_model_name(&name)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let norm_query = query.remove("normalisation");
        let overrides = overrides_from_query(&query)?;
        let limit = (max_params as usize)
            .saturating_mul(8)
            .saturating_add(1 << 20)
            .min(hub_cfg.max_message_bytes);
        let body = read_body(&req, payload, limit).await?;
        let (layout, weights) = ModelLayout::from_safetensors_limited(&body, max_params)
            .map_err(|e| ApiError::new(e.code, e.message))?;
        let spec = MlpSpec::from_layout(&layout);
        let arch = if spec.is_some() { "mlp" } else { "custom" };
        // Uploaded weights were trained on whatever inputs their author
        // used: no normalisation unless asked for.
        let norm = match norm_query.as_deref() {
            None | Some("off") => NormState::Off,
            Some("federated") => normalisation_for(
                Some(NormalisationRequest::Mode(NormalisationMode::Federated)),
                spec.map(|s| s.inputs),
            )?,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "normalisation: `{}` is not one of off, federated",
                    other.escape_default()
                )))
            }
        };
        hub_actor::CreateModel {
            name,
            architecture: arch.into(),
            layout,
            weights,
            overrides,
            normalisation: norm,
        }
    } else {
        if let Some(k) = query.keys().next() {
            return Err(ApiError::bad_request(format!(
                "query parameter `{k}` is only for a safetensors body; put settings in the JSON's `aggregation`"
            )));
        }
        let body = read_body(&req, payload, JSON_LIMIT).await?;
        let j: CreateModelRequest = parse_json(&body)?;
        crate::protocol::validate_model_name(&j.name)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let overrides = j.aggregation.unwrap_or_default();
        overrides
            .validate()
            .map_err(|e| ApiError::bad_request(format!("aggregation.{e}")))?;
        match j.architecture.unwrap_or(Architecture::Mlp) {
            Architecture::Flat => {
                // One flat f32 tensor of zeros: for load tests and for
                // trainers that keep their own structure in a flat buffer.
                let n = j.params.unwrap_or(0);
                if n == 0 {
                    return Err(ApiError::bad_request(
                        "a flat model needs `params` of at least 1",
                    ));
                }
                if n > max_params {
                    return Err(too_large(Some(n)));
                }
                hub_actor::CreateModel {
                    name: j.name,
                    architecture: "flat".into(),
                    layout: ModelLayout::new(vec![("weights".into(), vec![n as usize])]),
                    weights: vec![0.0; n as usize],
                    overrides,
                    normalisation: normalisation_for(j.normalisation, None)?,
                }
            }
            Architecture::Mlp | Architecture::Digits => {
                let spec = MlpSpec {
                    inputs: j.inputs.unwrap_or(64),
                    hidden: j.hidden.unwrap_or(64),
                    classes: j.classes.unwrap_or(10),
                };
                if let Err(e) = spec.check(max_params) {
                    let n = spec.checked_params();
                    return Err(if n.is_some_and(|n| n <= max_params) {
                        ApiError::bad_request(e)
                    } else {
                        too_large(n)
                    });
                }
                hub_actor::CreateModel {
                    name: j.name,
                    architecture: "mlp".into(),
                    layout: spec.layout(),
                    weights: spec.init_weights(j.seed.unwrap_or(42)),
                    overrides,
                    normalisation: normalisation_for(j.normalisation, Some(spec.inputs))?,
                }
            }
        }
    };
    create_checks::update_fits(&msg.layout, &hub_cfg, &st.budget)?;
    let name = msg.name.clone();
    st.hub.send(msg).await?.map_err(refusal)?;
    Ok(HttpResponse::Created().json(Created { name, version: 0 }))
}

/// Lists every aggregation key as an optional query parameter of
/// `POST /v1/models`, from the one declaration of the settings.
pub struct AggregationQuery;

impl utoipa::Modify for AggregationQuery {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::{RefOr, Required, Schema};
        use utoipa::PartialSchema;
        let RefOr::T(Schema::Object(obj)) = AggregationOverrides::schema() else {
            return;
        };
        let Some(item) = doc.paths.paths.get_mut("/v1/models") else {
            return;
        };
        let Some(op) = item.post.as_mut() else {
            return;
        };
        let params = op.parameters.get_or_insert_with(Vec::new);
        for (key, schema) in obj.properties {
            params.push(
                ParameterBuilder::new()
                    .name(key)
                    .parameter_in(ParameterIn::Query)
                    .required(Required::False)
                    .description(Some(
                        "Aggregation setting for a safetensors body (see the `aggregation` object)",
                    ))
                    .schema(Some(schema))
                    .build(),
            );
        }
    }
}

/// One model: tensors, aggregation settings, waiting state, last metrics.
#[utoipa::path(
    tag = "models",
    params(("model" = String, Path, description = "Model name")),
    responses(
        (status = 200, description = "The model", body = ModelStatus),
        (status = 404, description = "No such model (`unknown_model`)", body = ErrorBody),
        (status = 503, description = "The hub is unavailable", body = ErrorBody),
    )
)]
#[get("/v1/models/{model}")]
pub async fn get_model(
    st: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = path.into_inner();
    let s = st.hub.send(hub_actor::GetStatus).await?;
    let m = s
        .models
        .into_iter()
        .find(|m| m.name == name)
        .ok_or_else(|| unknown_model(&name))?;
    Ok(HttpResponse::Ok().json(m))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// An earlier version whose checkpoint is still kept.
    pub version: u64,
}

/// Makes an earlier kept checkpoint current again (admin), as a new version
/// whose parent is the one it replaces. Pending updates trained from a
/// later version are refused (`rolled_back`); the server optimizer restarts.
#[utoipa::path(
    tag = "models",
    security(("adminToken" = [])),
    params(("model" = String, Path, description = "Model name")),
    request_body = RollbackRequest,
    responses(
        (status = 200, description = "Rolled back", body = RolledBack),
        (status = 400, description = "Bad body", body = ErrorBody),
        AdminRefusals,
        (status = 404, description = "No such model or version", body = ErrorBody),
        (status = 409, description = "Not an earlier version, or a version is being made (try again)", body = ErrorBody),
        (status = 410, description = "That version's weights were dropped", body = ErrorBody),
        (status = 413, description = "Body over its limit", body = ErrorBody),
        (status = 503, description = "The hub is unavailable", body = ErrorBody),
    )
)]
#[post("/v1/models/{model}/rollback")]
pub async fn rollback(
    req: HttpRequest,
    st: web::Data<AppState>,
    path: web::Path<String>,
    payload: web::Payload,
    _admin: AdminAuth,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload, JSON_LIMIT).await?;
    let r: RollbackRequest = parse_json(&body)?;
    let done = st
        .hub
        .send(hub_actor::Rollback {
            model: path.into_inner(),
            to_version: r.version,
        })
        .await?
        .map_err(refusal)?;
    Ok(HttpResponse::Ok().json(done))
}
