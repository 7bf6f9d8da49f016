//! The built-in `kernel` language model end to end: the hub creates it and
//! scores its versions in bits per byte per specialty; `kernal trainer`
//! joins it by default (or trains on its own tree with --source); trainers'
//! bits-per-byte reports are validated; `kernal evaluate` and
//! `kernal complete` judge a checkpoint downloaded from the hub.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Three specialists on `kernel` for a few versions with light local work.
fn run_trainers(hub_ws: &str, extra: &[&str], versions: &str) -> Vec<std::process::Output> {
    let children: Vec<_> = [
        ("k_alice", "networking"),
        ("k_bob", "graphics"),
        ("k_carol", "security"),
    ]
    .iter()
    .map(|(name, spec)| {
        Command::new(kernal_bin())
            .args([
                "trainer",
                name,
                spec,
                "tok",
                "--hub",
                hub_ws,
                "--json",
                "--max-versions",
                versions,
                "--steps",
                "8",
            ])
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    })
    .collect();
    children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

fn events(out: &std::process::Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_commands_train_the_kernel_model_scored_in_bits_per_byte() {
    let hub = start_hub(|_| {});
    let url = hub.url();
    // Created at start beside digits, PyTorch-style tensor names.
    let m = get_json(&format!("{url}/v1/models/kernel")).await;
    assert_eq!(m["tensors"][0]["name"], "tok_emb.weight", "{m}");
    assert_eq!(m["tensors"][4]["name"], "blocks.0.attn.qkv.weight", "{m}");
    let v0 = get_json(&format!("{url}/v1/models/kernel/versions/0")).await;
    let e0 = &v0["metrics"]["eval"];
    assert!(
        (e0["bits_per_byte"].as_f64().unwrap() - 8.0).abs() < 0.3,
        "{v0}"
    );
    for s in ["networking", "graphics", "security"] {
        assert!(e0["per_specialty"][s].as_f64().is_some(), "{v0}");
    }
    let outs = tokio::task::spawn_blocking({
        let ws = hub.hub.ws_url();
        move || run_trainers(&ws, &[], "4")
    })
    .await
    .unwrap();
    for o in &outs {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let ev = events(o);
        assert!(
            ev.iter()
                .any(|e| e["event"] == "welcome" && e["model"] == "kernel"),
            "{ev:?}"
        );
        let evals: Vec<&Value> = ev.iter().filter(|e| e["event"] == "evaluation").collect();
        assert!(!evals.is_empty(), "{ev:?}");
        for e in evals {
            assert!(e["specialty_bits_per_byte"].as_f64().unwrap() > 0.0, "{e}");
            assert!(e["global_bits_per_byte"].as_f64().unwrap() > 0.0, "{e}");
        }
    }
    // The hub scored later versions, each part, and they beat version 0.
    let (v, bpb) = wait_for("a scored version", Duration::from_secs(60), || {
        let url = url.clone();
        async move {
            let vs = get_json(&format!("{url}/v1/models/kernel/versions")).await;
            vs["versions"].as_array()?.iter().find_map(|v| {
                let n = v["version"].as_u64()?;
                let b = v["metrics"]["eval"]["bits_per_byte"].as_f64()?;
                (n >= 2).then_some((n, b))
            })
        }
    })
    .await;
    assert!(bpb < 7.0, "version {v}: {bpb}");
    let body = get_json(&format!("{url}/v1/models/kernel/versions/{v}")).await;
    let e = &body["metrics"]["eval"];
    assert_eq!(e["dataset"], "kernel-heldout");
    assert!(e["unseen_bits_per_byte"].as_f64().unwrap() < 7.5, "{e}");
    assert!(
        e["per_specialty"]["security"].as_f64().unwrap() < 7.5,
        "{e}"
    );

    // Anyone can judge the checkpoint: evaluate and complete.
    let ck = hub.dir.path().join("kernel.safetensors");
    let bytes = reqwest::get(format!("{url}/v1/models/kernel/versions/{v}/weights"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    std::fs::write(&ck, &bytes).unwrap();
    let code = hub.dir.path().join("code");
    std::fs::create_dir(&code).unwrap();
    std::fs::write(
        code.join("a.c"),
        "static int tcp_init(struct sock *sk)\n{\n\tint err = 0;\n\tif (!sk)\n\t\treturn -EINVAL;\n\treturn err;\n}\n",
    )
    .unwrap();
    std::fs::write(code.join("notes.md"), "# not code\n").unwrap();
    let out = Command::new(kernal_bin())
        .args(["evaluate", "--model", "kernel", "--weights"])
        .arg(&ck)
        .arg(&code)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["files"], 1, "{r}");
    assert!(
        r["bytes"].as_u64().unwrap() > 0 && r["bits_per_byte"].as_f64().unwrap() < 8.0,
        "{r}"
    );
    // The initial weights score worse than the trained ones on the same code.
    let v0_bytes = reqwest::get(format!("{url}/v1/models/kernel/versions/0/weights"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let ck0 = hub.dir.path().join("v0.safetensors");
    std::fs::write(&ck0, &v0_bytes).unwrap();
    let out0 = Command::new(kernal_bin())
        .args(["evaluate", "--json", "--weights"])
        .arg(&ck0)
        .arg(&code)
        .output()
        .unwrap();
    let r0: Value = serde_json::from_slice(&out0.stdout).unwrap();
    assert!(
        r0["bits_per_byte"].as_f64().unwrap() > r["bits_per_byte"].as_f64().unwrap(),
        "{r0} {r}"
    );
    // Bad input: exit code 2 with a sentence.
    let bad = Command::new(kernal_bin())
        .args(["evaluate", "--weights"])
        .arg(code.join("a.c"))
        .arg(&code)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a kernel checkpoint"));
    let missing = Command::new(kernal_bin())
        .args(["evaluate", "--weights"])
        .arg(&ck)
        .arg(hub.dir.path().join("nowhere"))
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    for from in [
        vec!["--weights".to_string(), ck.display().to_string()],
        vec!["--hub".to_string(), url.clone()],
    ] {
        let out = Command::new(kernal_bin())
            .arg("complete")
            .args(&from)
            .args(["--max-bytes", "40", "static int tcp_"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.starts_with("static int tcp_") && text.len() > "static int tcp_".len(),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_trains_on_its_own_tree_and_bad_reports_are_refused() {
    let hub = start_hub(|c| c.models.get_mut("kernel").unwrap().aggregation.min_updates = Some(1));
    let tree = hub.dir.path().join("tree");
    std::fs::create_dir_all(tree.join("drivers")).unwrap();
    for i in 0..12 {
        std::fs::write(
            tree.join(format!("drivers/d{i}.c")),
            format!(
                "int driver_{i}_probe(struct device *dev)\n{{\n\treturn dev ? {i} : -ENODEV;\n}}\n"
            )
            .repeat(8),
        )
        .unwrap();
    }
    let ws = hub.hub.ws_url();
    let out = Command::new(kernal_bin())
        .args([
            "trainer",
            "own_tree",
            "drivers",
            "tok",
            "--hub",
            &ws,
            "--json",
            "--max-versions",
            "2",
            "--steps",
            "5",
            "--source",
        ])
        .arg(&tree)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ev = events(&out);
    assert!(
        ev.iter()
            .any(|e| e["event"] == "evaluation" && e["specialty_bits_per_byte"].as_f64().is_some()),
        "{ev:?}"
    );
    // A tree without matching files, and --data on the language model: exit 2.
    let none = Command::new(kernal_bin())
        .args([
            "trainer", "own_tree", "drivers", "tok", "--hub", &ws, "--ext", ".rs", "--source",
        ])
        .arg(&tree)
        .output()
        .unwrap();
    assert_eq!(
        none.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&none.stderr)
    );
    let csv = Command::new(kernal_bin())
        .args([
            "trainer", "own_tree", "drivers", "tok", "--hub", &ws, "--data", "x.csv",
        ])
        .output()
        .unwrap();
    assert_eq!(csv.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&csv.stderr).contains("--source"));

    // Bits per byte in an eval message: optional, and refused when absurd
    // while the hub keeps serving.
    let (mut r, _, _) = Raw::hello(&hub.ws(), "reporter", "tok", "kernel").await;
    r.send_json(json!({"type": "eval", "version": 0, "specialty_bits_per_byte": 3.5, "global_bits_per_byte": 4.0, "num_examples": 10})).await;
    r.send_json(json!({"type": "eval", "version": 0, "global_bits_per_byte": -1.0}))
        .await;
    let e = r.expect_error().await;
    assert_eq!(e["code"], "bad_eval", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("global_bits_per_byte"),
        "{e}"
    );
    let m = get_json(&format!("{}/v1/models/kernel", hub.url())).await;
    assert_eq!(m["name"], "kernel");
}

/// A kernel scenario reduced to seconds: the three specialists train
/// `kernel` together, each alone, and one centralised run; the collective
/// must beat every *other* specialist on each specialty's held-out code
/// (it can only by learning from that specialty's member) and stay near
/// the specialist on its own code and on unseen subsystems. The kept
/// checkpoints load with `kernal evaluate`, which scores the extra
/// `eval_source` code exactly as the report did.
#[test]
fn a_reduced_kernel_scenario_passes_and_keeps_weights_anyone_can_judge() {
    let dir = tempfile::tempdir().unwrap();
    let extra = dir.path().join("extra");
    std::fs::create_dir(&extra).unwrap();
    std::fs::write(
        extra.join("probe.c"),
        "static int tcp_probe(struct sock *sk, struct sk_buff *skb)\n{\n\tstruct tcp_sock *tp = tcp_sk(sk);\n\n\tif (!skb)\n\t\treturn -EINVAL;\n\ttp->snd_cwnd = 10;\n\treturn 0;\n}\n",
    )
    .unwrap();
    let scenario = dir.path().join("kernel_small.toml");
    std::fs::write(
        &scenario,
        r#"
description = "reduced kernel scenario"
seed = 3
eval_source = ["extra"]

[hub]
model = "kernel"
strategy = "fedavg"
min_updates = 3
round_timeout_secs = 30

[kernel]
steps = 12
batch = 8
lr = 0.01
eval_windows = 96

[[trainers]]
name = "AI_Alice"
specialty = "networking"

[[trainers]]
name = "AI_Bob"
specialty = "graphics"

[[trainers]]
name = "AI_Carol"
specialty = "security"

[stop]
versions = 6
timeout_secs = 600

[pass]
max_bits_over_specialist = 0.3
min_bits_under_other_specialists = 0.02
max_unseen_bits_over_specialists = 0.15
"#,
    )
    .unwrap();
    let kept = dir.path().join("kept");
    let report = dir.path().join("report.json");
    let out = Command::new(kernal_bin())
        .arg("harness")
        .arg(&scenario)
        .args(["--quiet", "--report"])
        .arg(&report)
        .arg("--keep-weights")
        .arg(&kept)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("PASS kernel_small"), "{text}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let k = &r["kernel"];
    let models: Vec<&str> = k["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["model"].as_str().unwrap())
        .collect();
    assert_eq!(
        models,
        [
            "collective",
            "solo-AI_Alice",
            "solo-AI_Bob",
            "solo-AI_Carol",
            "centralised"
        ]
    );
    let crits: Vec<&str> = r["criteria"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for s in ["networking", "graphics", "security"] {
        assert!(
            crits.contains(&format!("max_bits_over_specialist[{s}]").as_str()),
            "{crits:?}"
        );
    }
    assert_eq!(
        crits
            .iter()
            .filter(|c| c.starts_with("min_bits_under_other_specialists["))
            .count(),
        6,
        "{crits:?}"
    );
    // Every kept checkpoint loads, and scores the extra code as the report says.
    for (i, m) in models.iter().enumerate() {
        let f = kept.join(format!("{m}.safetensors"));
        let out = Command::new(kernal_bin())
            .args(["evaluate", "--model", "kernel", "--json", "--weights"])
            .arg(&f)
            .arg(&extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{m}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let e: Value = serde_json::from_slice(&out.stdout).unwrap();
        let reported = k["models"][i]["bits_per_byte"]["eval_source:extra"]
            .as_f64()
            .unwrap();
        let judged = e["bits_per_byte"].as_f64().unwrap();
        assert!(
            (reported - judged).abs() < 1e-4 && judged < 7.5,
            "{m}: report {reported}, kernal evaluate {judged}"
        );
    }
}
