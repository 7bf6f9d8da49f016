//! Reading a `kernel` checkpoint (the safetensors file the hub serves as a
//! version's weights, or the harness keeps): its sizes come from its own
//! tensors, so any checkpoint of the architecture loads.

use super::model::{KernelError, KernelSpec};

/// Largest checkpoint read (bytes): a kernel model of the hub's largest
/// allowed size is far smaller.
pub const MAX_CHECKPOINT_BYTES: usize = 512 << 20;

/// The sizes and flat weights of a kernel checkpoint.
pub fn load(bytes: &[u8]) -> Result<(KernelSpec, Vec<f32>), KernelError> {
    let bad = |m: String| KernelError::Input(format!("not a kernel checkpoint: {m}"));
    if bytes.len() > MAX_CHECKPOINT_BYTES {
        return Err(bad(format!(
            "{} bytes is more than {MAX_CHECKPOINT_BYTES}",
            bytes.len()
        )));
    }
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
    let tensors = meta.tensors();
    let shape = |name: &str| tensors.get(name).map(|t| t.shape.clone());
    let (Some(tok), Some(pos)) = (shape("tok_emb.weight"), shape("pos_emb.weight")) else {
        return Err(bad("no tok_emb.weight or pos_emb.weight tensor".into()));
    };
    let layers = tensors
        .keys()
        .filter(|k| k.starts_with("blocks.") && k.ends_with(".ln1.weight"))
        .count();
    let (Some(&d_model), Some(&context)) = (tok.get(1), pos.first()) else {
        return Err(bad("embeddings are not matrices".into()));
    };
    let spec = KernelSpec {
        d_model,
        layers,
        context,
    };
    // No more parameters than the file has room for as f32, checked before
    // anything is allocated on the file's say-so.
    spec.check((bytes.len() / 4) as u64)
        .map_err(|e| bad(e.to_string()))?;
    let weights = spec
        .layout()
        .decode(bytes)
        .map_err(|e| bad(e.to_string()))?;
    Ok((spec, weights))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_what_the_layout_encodes_and_refuses_the_rest() {
        let spec = KernelSpec {
            d_model: 16,
            layers: 2,
            context: 8,
        };
        let w = spec.init_weights(9);
        let bytes = spec.layout().encode(&w, None).unwrap();
        let (s, back) = load(&bytes).unwrap();
        assert_eq!(s, spec);
        assert_eq!(back, w);
        assert!(load(b"garbage").is_err());
        let mlp = crate::model::MlpSpec {
            inputs: 2,
            hidden: 2,
            classes: 2,
        };
        let other = mlp.layout().encode(&mlp.init_weights(1), None).unwrap();
        assert!(load(&other).is_err());
    }
}
