//! `Dockerfile` and `.dockerignore`: the runtime stage runs the builder's binary as a numeric
//! non-root user; the build context keeps what the build reads and nothing else.

use std::collections::BTreeSet;

use crate::support::*;

/// Dockerfile instructions per stage: (stage name, [(INSTRUCTION, arguments)]), continuations joined.
fn dockerfile_stages() -> Vec<(String, Vec<(String, String)>)> {
    let mut logical = Vec::new();
    let mut pending = String::new();
    for line in read("Dockerfile").lines() {
        let t = line.trim();
        if t.starts_with('#') && pending.is_empty() || t.is_empty() {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
        } else {
            pending.push_str(t);
            logical.push(std::mem::take(&mut pending));
        }
    }
    let mut stages: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for line in logical {
        let (instruction, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let instruction = instruction.to_ascii_uppercase();
        if instruction == "FROM" {
            let name =
                args.split_whitespace().skip_while(|w| !w.eq_ignore_ascii_case("AS")).nth(1).unwrap_or("");
            stages.push((name.to_owned(), Vec::new()));
        }
        if let Some((_, instructions)) = stages.last_mut() {
            instructions.push((instruction, args.trim().to_owned()));
        }
    }
    stages
}

#[test]
fn dockerfile_runtime_runs_as_a_numeric_non_root_user_the_binary_built_by_the_builder() {
    let stages = dockerfile_stages();
    let (runtime_name, runtime) = stages.last().expect("a runtime stage");
    let get = |stage: &[(String, String)], instruction: &str| -> Vec<String> {
        stage.iter().filter(|(i, _)| i == instruction).map(|(_, a)| a.clone()).collect()
    };
    let user = get(runtime, "USER").pop().expect("the runtime stage sets USER");
    let uid = user.split(':').next().expect("uid");
    assert!(uid.parse::<u32>().is_ok_and(|u| u != 0), "USER must be a numeric non-root uid, got {user}");
    // Base images are build arguments (scripts/image-demo passes local ones); the defaults are the
    // public images, and both stages share a Debian release.
    let args = build_args();
    let base = |stage: &[(String, String)]| -> String {
        let from = get(stage, "FROM")[0].split_whitespace().next().expect("an image").to_owned();
        let arg =
            from.strip_prefix("${").and_then(|a| a.strip_suffix('}')).expect("FROM takes a build argument");
        args.get(arg).cloned().unwrap_or_else(|| panic!("ARG {arg} has a default"))
    };
    assert!(base(runtime).starts_with("debian:bookworm-slim"), "runtime base");

    let entrypoint: Vec<String> =
        serde_json::from_str(&get(runtime, "ENTRYPOINT").pop().expect("ENTRYPOINT")).expect("exec form");
    assert_eq!(entrypoint, ["card-registrar"]);
    let cmd: Vec<String> = serde_json::from_str(&get(runtime, "CMD").pop().expect("CMD")).expect("exec form");
    assert_eq!(cmd, ["run"]);

    let copies = get(runtime, "COPY");
    let from_builder = copies.iter().find(|c| c.contains("--from=")).expect("COPY --from the builder");
    let builder_name =
        from_builder.split("--from=").nth(1).and_then(|s| s.split_whitespace().next()).expect("stage");
    assert_ne!(builder_name, runtime_name);
    let (_, builder) = stages.iter().find(|(n, _)| n == builder_name).expect("the builder stage exists");
    assert!(base(builder).contains("bookworm"), "builder and runtime share a Debian release");
    let toolchain = read("rust-toolchain.toml");
    let channel =
        toolchain.lines().find_map(|l| l.strip_prefix("channel = ")).expect("a channel").trim_matches('"');
    assert!(base(builder).contains(channel), "the builder's Rust is rust-toolchain.toml's {channel}");
    let build = get(builder, "RUN").into_iter().find(|r| r.contains("cargo build")).expect("cargo build");
    assert!(build.contains("--release") && build.contains("--locked") && build.contains("--workspace"));
    for binary in ["card-registrar", "d1-simulator"] {
        assert!(build.contains(&format!("target/release/{binary}")), "the builder keeps {binary}");
        assert!(from_builder.contains(&format!("/{binary}")), "the runtime copies {binary}");
    }

    let env = get(runtime, "ENV").join(" ");
    let listen =
        env.split_whitespace().find_map(|kv| kv.strip_prefix("ADMIN_LISTEN=")).expect("ADMIN_LISTEN");
    assert_eq!(get(runtime, "EXPOSE"), [port_of(listen).to_string()]);
    assert!(
        get(runtime, "HEALTHCHECK").is_empty(),
        "probes are per orchestrator (see the Dockerfile header)"
    );
}

/// The Dockerfile's global `ARG NAME=default` lines.
fn build_args() -> std::collections::BTreeMap<String, String> {
    read("Dockerfile")
        .lines()
        .take_while(|l| !l.trim_start().starts_with("FROM"))
        .filter_map(|l| l.trim().strip_prefix("ARG "))
        .filter_map(|a| a.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn docker_context_leaves_out_build_output_and_history() {
    let ignored: BTreeSet<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    for entry in ["target", ".git"] {
        assert!(ignored.contains(entry), ".dockerignore must exclude {entry}");
    }
    for needed in
        ["src", "schemas", "migrations", "benches", "d1-simulator", "Cargo.toml", "Cargo.lock", "build.rs"]
    {
        assert!(!ignored.contains(needed), "{needed} is needed by the build");
    }
}
