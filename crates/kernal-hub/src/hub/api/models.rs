// Over 600 lines: the REST handlers of one resource (models, their versions, checkpoints, evaluations, rollback), each with its OpenAPI annotation.
//! Models: list, create, describe, their versions, checkpoints and
//! evaluations, and rollback.

use std::collections::HashMap;

use actix_web::{get, post, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::IntoParams;

use super::create_checks::{self, overrides_from_query};
use super::AdminRefusals;
use super::{parse_json, read, read_body, refusal, require_admin, AppState, Created, JSON_LIMIT};
use crate::aggregation::{AggregationOverrides, Strategy};
use crate::db::{self, DbPool, EvalRow};
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
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &st)?;
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

fn unknown_model(name: &str) -> ApiError {
    ApiError::new(
        ErrorCode::UnknownModel,
        format!("no model named `{}`", name.escape_default()),
    )
}

/// `?limit=`: how many of the newest rows to return.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LimitQuery {
    /// The newest this many (1 to 100000; default 1000 for versions, 5000
    /// for evaluations).
    #[param(minimum = 1, maximum = 100000)]
    pub limit: Option<i64>,
}

/// Checks an optional `limit` against its range.
pub fn limit(given: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    match given {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!(
            "limit: must be between 1 and {max} (got {n})"
        ))),
    }
}

async fn ensure_model(pool: &DbPool, name: &str) -> Result<(), ApiError> {
    let n = name.to_string();
    match read(pool, move |c| db::get_model(c, &n)).await? {
        Some(_) => Ok(()),
        None => Err(unknown_model(name)),
    }
}

/// One global version's record.
#[derive(Serialize, utoipa::ToSchema)]
pub struct VersionInfo {
    pub model: String,
    pub version: i64,
    /// The version it was made from (none for version 0).
    pub parent: Option<i64>,
    /// Updates folded into it.
    pub num_updates: i32,
    pub created_at: String,
    /// Aggregation report, hub evaluation, applied update ids (or, for a
    /// rollback, the version it restored).
    #[schema(value_type = Object)]
    pub metrics: serde_json::Value,
    /// The trainers' own evaluations of this version, pooled (absent until
    /// one reports).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub federated_eval: Option<FederatedEval>,
}

/// Trainers' `eval` reports of one version, weighted by their examples (a
/// report without `num_examples` counts as one).
#[derive(Serialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
pub struct FederatedEval {
    /// Example-weighted mean of the reports' `global_accuracy`.
    pub accuracy: Option<f64>,
    /// Example-weighted mean of the reports' `loss`.
    pub loss: Option<f64>,
    pub examples: i64,
    pub reports: usize,
}

/// Pools evaluation reports per version.
pub fn pool_evaluations(rows: &[db::EvalFigures]) -> HashMap<i64, FederatedEval> {
    #[derive(Default)]
    struct Sums {
        acc: (f64, f64),
        loss: (f64, f64),
        examples: i64,
        reports: usize,
    }
    let mut by: HashMap<i64, Sums> = HashMap::new();
    for (v, acc, loss, n) in rows {
        let w = n.unwrap_or(1).max(1);
        let s = by.entry(*v).or_default();
        if let Some(a) = acc {
            s.acc.0 += a * w as f64;
            s.acc.1 += w as f64;
        }
        if let Some(l) = loss {
            s.loss.0 += l * w as f64;
            s.loss.1 += w as f64;
        }
        s.examples = s.examples.saturating_add(w);
        s.reports += 1;
    }
    by.into_iter()
        .map(|(v, s)| {
            let mean = |(sum, w): (f64, f64)| (w > 0.0).then(|| sum / w);
            (
                v,
                FederatedEval {
                    accuracy: mean(s.acc),
                    loss: mean(s.loss),
                    examples: s.examples,
                    reports: s.reports,
                },
            )
        })
        .collect()
}

impl From<&db::VersionMeta> for VersionInfo {
    fn from(v: &db::VersionMeta) -> Self {
        VersionInfo {
            model: v.model.clone(),
            version: v.version,
            parent: v.parent,
            num_updates: v.num_updates,
            created_at: v.created_at.clone(),
            metrics: serde_json::from_str(&v.metrics).unwrap_or_else(|_| serde_json::json!({})),
            federated_eval: None,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct VersionsList {
    pub versions: Vec<VersionInfo>,
}

/// Version history with metrics, oldest first.
#[utoipa::path(
    tag = "models",
    params(("model" = String, Path, description = "Model name"), LimitQuery),
    responses(
        (status = 200, description = "The newest `limit` versions", body = VersionsList),
        (status = 400, description = "Bad `limit`", body = ErrorBody),
        (status = 404, description = "No such model", body = ErrorBody),
    )
)]
#[get("/v1/models/{model}/versions")]
pub async fn list_versions(
    st: web::Data<AppState>,
    path: web::Path<String>,
    q: web::Query<LimitQuery>,
) -> Result<HttpResponse, ApiError> {
    let name = path.into_inner();
    let limit = limit(q.limit, 1000, 100_000)?;
    ensure_model(&st.pool, &name).await?;
    let (rows, evals) = read(&st.pool, move |c| {
        let rows = db::list_versions(c, &name, limit)?;
        let from = rows.first().map(|r| r.version).unwrap_or(0);
        let evals = db::evaluation_figures(c, &name, from)?;
        Ok((rows, evals))
    })
    .await?;
    let pooled = pool_evaluations(&evals);
    Ok(HttpResponse::Ok().json(VersionsList {
        versions: rows
            .iter()
            .map(|r| VersionInfo {
                federated_eval: pooled.get(&r.version).cloned(),
                ..VersionInfo::from(r)
            })
            .collect(),
    }))
}

async fn resolve_version(pool: &DbPool, model: &str, v: &str) -> Result<i64, ApiError> {
    ensure_model(pool, model).await?;
    if v == "latest" {
        let m = model.to_string();
        return read(pool, move |c| db::latest_version(c, &m))
            .await?
            .ok_or_else(|| ApiError::not_found(format!("model `{model}` has no version")));
    }
    match v.parse::<i64>() {
        Ok(n) if n >= 0 => Ok(n),
        _ => Err(ApiError::bad_request(format!(
            "version must be a number (0 or more) or `latest`, not `{}`",
            v.escape_default()
        ))),
    }
}

/// A version with the federated evaluations trainers reported for it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct VersionDetail {
    #[serde(flatten)]
    pub info: VersionInfo,
    pub evaluations: Vec<EvalRow>,
}

/// One version (number or `latest`): metadata, metrics, federated evaluations.
#[utoipa::path(
    tag = "models",
    params(
        ("model" = String, Path, description = "Model name"),
        ("version" = String, Path, pattern = "^(latest|[0-9]{1,18})$", description = "Version number or `latest`"),
    ),
    responses(
        (status = 200, description = "The version", body = VersionDetail),
        (status = 400, description = "Not a version number", body = ErrorBody),
        (status = 404, description = "No such model or version", body = ErrorBody),
    )
)]
#[get("/v1/models/{model}/versions/{version}")]
pub async fn get_version(
    st: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (model, v) = path.into_inner();
    let version = resolve_version(&st.pool, &model, &v).await?;
    let name = model.clone();
    let row = read(&st.pool, move |c| db::get_version(c, &name, version))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("model `{model}` has no version {version}")))?;
    let name = model.clone();
    let evaluations = read(&st.pool, move |c| {
        db::version_evaluations(c, &name, version)
    })
    .await?;
    let figures: Vec<_> = evaluations
        .iter()
        .map(|e| (version, e.global_accuracy, e.loss, e.num_examples))
        .collect();
    Ok(HttpResponse::Ok().json(VersionDetail {
        info: VersionInfo {
            federated_eval: pool_evaluations(&figures).remove(&version),
            ..VersionInfo::from(&row)
        },
        evaluations,
    }))
}

/// The version's checkpoint as safetensors.
#[utoipa::path(
    tag = "models",
    params(
        ("model" = String, Path, description = "Model name"),
        ("version" = String, Path, pattern = "^(latest|[0-9]{1,18})$", description = "Version number or `latest`"),
    ),
    responses(
        (status = 200, description = "safetensors checkpoint", content_type = "application/octet-stream"),
        (status = 400, description = "Not a version number", body = ErrorBody),
        (status = 404, description = "No such model or version", body = ErrorBody),
        (status = 410, description = "Weights dropped by `keep_weights_versions` (`weights_pruned`)", body = ErrorBody),
    )
)]
#[get("/v1/models/{model}/versions/{version}/weights")]
pub async fn get_weights(
    st: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (model, v) = path.into_inner();
    let version = resolve_version(&st.pool, &model, &v).await?;
    let name = model.clone();
    let blobs = st.blobs.clone();
    let (bytes, row) = read(&st.pool, move |c| {
        Ok((
            db::get_weights(c, &blobs, &name, version)?,
            db::get_model(c, &name)?,
        ))
    })
    .await?;
    let bytes = bytes
        .ok_or_else(|| ApiError::not_found(format!("model `{model}` has no version {version}")))?;
    if bytes.is_empty() {
        return Err(ApiError::new(
            ErrorCode::WeightsPruned,
            format!(
                "the weights of version {version} of `{model}` were dropped: the hub keeps the \
                 newest hub.keep_weights_versions checkpoints of each model"
            ),
        ));
    }
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header((
            "content-disposition",
            format!("attachment; filename=\"{model}-v{version}.safetensors\""),
        ))
        .insert_header(("x-kernal-version", version.to_string()))
        .body(with_normalisation(bytes, row.as_ref(), version).await?))
}

/// A checkpoint of a model with frozen normalisation carries it as two more
/// tensors, `normalisation.mean` and `normalisation.std`, so that it is
/// usable on raw features without asking the hub. (Trainers get weights
/// over the WebSocket without them: they hold the statistics already.)
async fn with_normalisation(
    bytes: Vec<u8>,
    row: Option<&db::ModelRow>,
    version: i64,
) -> Result<Vec<u8>, ApiError> {
    let Some(row) = row else {
        return Ok(bytes);
    };
    let norm = NormState::from_stored(row.normalisation.as_deref())
        .ok()
        .and_then(|n| n.frozen().cloned());
    let (Some(n), Ok(layout)) = (norm, serde_json::from_str::<ModelLayout>(&row.layout)) else {
        return Ok(bytes);
    };
    let (Some(mean), Some(std)) = (n.mean, n.std) else {
        return Ok(bytes);
    };
    web::block(move || {
        let mut weights = layout.decode(&bytes).map_err(|e| e.message)?;
        let mut tensors = layout.tensors.clone();
        let (m, s) = (mean.len(), std.len());
        let stats = vec![
            ("normalisation.mean".into(), vec![m]),
            ("normalisation.std".into(), vec![s]),
        ];
        tensors.extend(ModelLayout::new(stats).tensors);
        weights.extend_from_slice(&mean);
        weights.extend_from_slice(&std);
        let mut meta = std::collections::HashMap::new();
        meta.insert("version".to_string(), version.to_string());
        meta.insert(
            "normalisation".to_string(),
            "inputs are (x - normalisation.mean) / normalisation.std".to_string(),
        );
        ModelLayout { tensors }
            .encode(&weights, Some(&meta))
            .map_err(|e| e.message)
    })
    .await
    .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?
    .map_err(|e| ApiError::new(ErrorCode::Internal, e))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EvaluationsList {
    pub evaluations: Vec<EvalRow>,
}

/// Federated evaluations reported by trainers, oldest first.
#[utoipa::path(
    tag = "models",
    params(("model" = String, Path, description = "Model name"), LimitQuery),
    responses(
        (status = 200, description = "The newest `limit` evaluations", body = EvaluationsList),
        (status = 400, description = "Bad `limit`", body = ErrorBody),
        (status = 404, description = "No such model", body = ErrorBody),
    )
)]
#[get("/v1/models/{model}/evaluations")]
pub async fn list_evaluations(
    st: web::Data<AppState>,
    path: web::Path<String>,
    q: web::Query<LimitQuery>,
) -> Result<HttpResponse, ApiError> {
    let name = path.into_inner();
    let limit = limit(q.limit, 5000, 100_000)?;
    ensure_model(&st.pool, &name).await?;
    let evaluations = read(&st.pool, move |c| db::list_evaluations(c, &name, limit)).await?;
    Ok(HttpResponse::Ok().json(EvaluationsList { evaluations }))
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
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &st)?;
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
