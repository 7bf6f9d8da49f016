//! kernal's hand-written safetensors encoder against a file written once by
//! Python's reference `safetensors` (tests/golden/make_golden.py): the same
//! tensors and metadata must give the same bytes, and the file must decode
//! to the values it was written from. No Python runs here; the live check
//! against the installed package is in the hub's tests (hub_protocol.rs).

use std::collections::HashMap;

use kernal_core::protocol::ModelLayout;

const GOLDEN: &[u8] = include_bytes!("golden/golden.safetensors");

fn tensors() -> Vec<(&'static str, Vec<usize>, Vec<f32>)> {
    let arange = |n: usize| (0..n).map(|i| i as f32);
    vec![
        (
            "fc1.bias",
            vec![3],
            arange(3).map(|x| x * 0.25 - 0.5).collect(),
        ),
        (
            "fc1.weight",
            vec![3, 2],
            arange(6).map(|x| x * 0.5 - 1.0).collect(),
        ),
        ("fc2.bias", vec![2], vec![1e-3, -2.5]),
        (
            "fc2.weight",
            vec![2, 3],
            arange(6).map(|x| x / 3.0).collect(),
        ),
    ]
}

fn layout_of(order: &[&str]) -> (ModelLayout, Vec<f32>) {
    let all = tensors();
    let mut specs = Vec::new();
    let mut flat = Vec::new();
    for name in order {
        let (n, shape, values) = all.iter().find(|t| t.0 == *name).unwrap();
        specs.push((n.to_string(), shape.clone()));
        flat.extend_from_slice(values);
    }
    (ModelLayout::new(specs), flat)
}

#[test]
fn encoder_writes_the_reference_writers_bytes() {
    let (layout, flat) = layout_of(&["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]);
    let meta = HashMap::from([("version".to_string(), "7".to_string())]);
    let ours = layout.encode(&flat, Some(&meta)).unwrap();
    assert_eq!(ours.len(), GOLDEN.len());
    assert!(ours == GOLDEN, "bytes differ from Python's safetensors");
}

#[test]
fn the_reference_file_decodes_in_any_layout_order() {
    // The hub's own order (weights before biases), not the file's.
    let order = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"];
    let (layout, flat) = layout_of(&order);
    assert_eq!(layout.decode(GOLDEN).unwrap(), flat);
}
