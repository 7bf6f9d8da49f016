//! `kernal evaluate` and `kernal complete`: anyone can judge a `kernel`
//! checkpoint (bits per byte on any code) or watch it complete a prompt.

use std::path::PathBuf;

use kernal_core::kernel::{checkpoint, corpus, KernelSpec};

/// Default bytes scored by `kernal evaluate` (more text is sampled in evenly
/// spaced windows): about ten seconds on one core for the built-in sizes.
pub const DEFAULT_EVAL_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum KernelCliError {
    /// What the user gave is unusable (exit code 2).
    #[error("{0}")]
    Input(String),
    /// Anything else (exit code 1).
    #[error("{0}")]
    Other(String),
}

impl KernelCliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            KernelCliError::Input(_) => 2,
            KernelCliError::Other(_) => 1,
        }
    }
}

fn read_checkpoint(path: &std::path::Path) -> Result<(KernelSpec, Vec<f32>), KernelCliError> {
    let bytes = std::fs::read(path)
        .map_err(|e| KernelCliError::Input(format!("--weights {}: {e}", path.display())))?;
    checkpoint::load(&bytes)
        .map_err(|e| KernelCliError::Input(format!("--weights {}: {e}", path.display())))
}

/// The figures `kernal evaluate` prints.
#[derive(Debug, serde::Serialize)]
pub struct EvaluateReport {
    pub model: String,
    pub bits_per_byte: f64,
    /// Bytes predicted.
    pub bytes: u64,
    /// Files read, and their bytes in all.
    pub files: usize,
    pub text_bytes: u64,
}

/// Bits per byte of the checkpoint at `weights` on the files under `paths`.
pub fn evaluate(
    model: &str,
    weights: &std::path::Path,
    paths: &[PathBuf],
    exts: &[String],
    max_bytes: usize,
) -> Result<EvaluateReport, KernelCliError> {
    if model != "kernel" {
        return Err(KernelCliError::Input(format!(
            "--model {model}: only the kernel language model is scored in bits per byte"
        )));
    }
    if paths.is_empty() {
        return Err(KernelCliError::Input(
            "give at least one file or directory to score".into(),
        ));
    }
    let (spec, w) = read_checkpoint(weights)?;
    let files =
        corpus::source_files(paths, exts).map_err(|e| KernelCliError::Input(e.to_string()))?;
    let text: Vec<u8> = files.iter().flat_map(|(_, b)| b.iter().copied()).collect();
    if text.len() < 2 {
        return Err(KernelCliError::Input(
            "the files hold fewer than 2 bytes".into(),
        ));
    }
    let windows = (max_bytes / spec.context).max(1);
    let e = spec
        .bits_per_byte(&w, &text, windows)
        .map_err(|e| KernelCliError::Other(e.to_string()))?;
    Ok(EvaluateReport {
        model: model.to_string(),
        bits_per_byte: e.bits_per_byte,
        bytes: e.bytes,
        files: files.len(),
        text_bytes: text.len() as u64,
    })
}

/// Where `kernal complete` gets its weights.
pub enum WeightsFrom {
    File(PathBuf),
    /// The latest version of `model` on the hub at this URL.
    Hub {
        url: String,
        model: String,
    },
}

/// The latest weights of `model` from a hub's REST API.
fn download(url: &str, model: &str) -> Result<Vec<u8>, KernelCliError> {
    let base = kernal_client::connection::http_url(url);
    let url = format!("{base}/v1/models/{model}/versions/latest/weights");
    let resp = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .and_then(|c| c.get(&url).send())
        .map_err(|e| KernelCliError::Other(format!("{url}: {e}")))?;
    let status = resp.status();
    if status.as_u16() == 404 {
        return Err(KernelCliError::Input(format!(
            "{url}: the hub has no model `{model}`"
        )));
    }
    if !status.is_success() {
        return Err(KernelCliError::Other(format!("{url}: HTTP {status}")));
    }
    let bytes = resp
        .bytes()
        .map_err(|e| KernelCliError::Other(format!("{url}: {e}")))?;
    Ok(bytes.to_vec())
}

/// The completion of `prompt` (without the prompt).
pub fn complete(
    from: &WeightsFrom,
    prompt: &str,
    max_bytes: usize,
    temperature: f64,
    seed: u64,
) -> Result<String, KernelCliError> {
    let (spec, w) = match from {
        WeightsFrom::File(p) => read_checkpoint(p)?,
        WeightsFrom::Hub { url, model } => checkpoint::load(&download(url, model)?)
            .map_err(|e| KernelCliError::Input(format!("model `{model}`: {e}")))?,
    };
    let out = spec
        .complete(&w, prompt.as_bytes(), max_bytes, temperature, seed)
        .map_err(|e| KernelCliError::Input(e.to_string()))?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}
