//! The OpenAPI document (`host/src/api/openapi.yaml`, served at
//! `/api/v1/openapi.yaml`) against the running server, with PyPI's
//! schemathesis (pinned in `tests/live/requirements.txt`): it generates
//! requests from the document, valid and invalid, and checks every answer's
//! status code, content type, headers and body against it. A disagreement
//! fails the test with schemathesis's report.
//!
//! Then the same run with a document that is wrong on purpose must fail:
//! the check can catch what it is here to catch.

mod common;
mod live;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use live::Host;
use serde_json::Value;

/// Bounded: examples per operation, and the whole run killed past this.
const MAX_EXAMPLES: &str = "40";
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// What a `schemathesis run` printed, whether it passed, and its JSON
/// report (operations tested, failures, warnings).
struct Run {
    passed: bool,
    output: String,
    report: Value,
}

/// Runs schemathesis with the document `schema` (a file) against `host`,
/// with the token on every request (so `POST /api/v1/reload` is reached;
/// the `ignored_auth` check still sends it without one and expects 401).
///
/// Every check, in the phases that need no links between operations:
/// `examples`, `coverage` (boundary values, every enum value, each
/// parameter wrong on its own, unknown parameters, undocumented methods)
/// and `fuzzing` (random valid and invalid requests).
fn schemathesis(host: &Host, schema: &Path, extra: &[&str], work: &Path) -> Run {
    let program = live::python_tool("schemathesis");
    let report = work.join("report.json");
    let _ = std::fs::remove_file(&report);
    let mut child = Command::new(program)
        .arg("run")
        .arg(schema)
        .args(["--url", &host.base])
        .args(["--checks", "all"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--workers", "1"])
        .args(["--request-timeout", "35"])
        .args(["--header", &format!("Authorization: Bearer {}", host.token)])
        .args(["--output-truncate", "false"])
        .args(["--report", "json", "--report-json-path"])
        .arg(&report)
        .args(extra)
        // Hypothesis keeps its example database in the working directory.
        .current_dir(work)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("schemathesis starts");
    // Read the pipes on threads, so a long report cannot fill a pipe and
    // stall the run.
    let stdout = reader(child.stdout.take().unwrap());
    let stderr = reader(child.stderr.take().unwrap());
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "schemathesis did not finish within {RUN_LIMIT:?}\n{}{}",
                stdout.join().unwrap(),
                stderr.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let output = format!("{}{}", stdout.join().unwrap(), stderr.join().unwrap());
    let report = std::fs::read_to_string(&report)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_else(|| panic!("schemathesis wrote no JSON report ({status}):\n{output}"));
    Run {
        passed: status.success(),
        output,
        report,
    }
}

fn reader(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// The document in the repository (the host serves the same bytes).
const DOCUMENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/openapi.yaml");

/// The operations the document describes: schemathesis must test each.
const OPERATIONS: usize = 10;

#[test]
fn the_server_answers_as_its_openapi_document_says() {
    let host = Host::start();
    let work = tempfile::tempdir().unwrap();

    // The host serves the document of the repository, as YAML.
    let served = host.get("/api/v1/openapi.yaml");
    assert_eq!(served.status, 200);
    assert!(
        served.content_type.starts_with("application/yaml"),
        "{}",
        served.content_type
    );
    assert_eq!(served.body, std::fs::read_to_string(DOCUMENT).unwrap());

    // From the file rather than the URL: given the document's own URL,
    // schemathesis leaves that operation out.
    let run = schemathesis(&host, Path::new(DOCUMENT), &[], work.path());
    assert!(
        run.passed,
        "the server and host/src/api/openapi.yaml disagree (fix the server, or the document where it is wrong):\n{}",
        run.output
    );
    // Every operation was tested, none errored: a document schemathesis
    // could not read would "pass" with nothing tested.
    let operations = &run.report["operations"];
    assert_eq!(
        (
            operations["total"].as_u64(),
            operations["tested"].as_u64(),
            operations["errored"].as_u64()
        ),
        (Some(OPERATIONS as u64), Some(OPERATIONS as u64), Some(0)),
        "schemathesis did not test every operation: {operations}\n{}",
        run.output
    );
    // A pattern it cannot generate from, or an operation whose valid
    // requests are all refused, means part of the document went untested.
    for (warning, found) in run.report["warnings"].as_object().unwrap() {
        assert!(
            found.as_array().is_none_or(Vec::is_empty),
            "schemathesis warns `{warning}`: {found}\n{}",
            run.output
        );
    }

    // A document that is wrong about one field: `polls` as a string. The
    // same run over `/api/v1/targets` must fail, naming the operation and
    // the field.
    let wrong = std::fs::read_to_string(DOCUMENT).unwrap().replacen(
        "        polls:\n          description: Polls since the host started (or the target changed).\n          type: integer",
        "        polls:\n          description: Polls since the host started (or the target changed).\n          type: string",
        1,
    );
    assert!(
        wrong.contains(
            "Polls since the host started (or the target changed).\n          type: string"
        ),
        "the test's edit no longer applies to openapi.yaml; update it"
    );
    let file = work.path().join("wrong.yaml");
    std::fs::write(&file, wrong).unwrap();
    let run = schemathesis(
        &host,
        &file,
        &["--include-path", "/api/v1/targets", "--max-failures", "1"],
        work.path(),
    );
    assert!(
        !run.passed,
        "schemathesis passed a document that calls `polls` a string:\n{}",
        run.output
    );
    assert!(
        run.output.contains("GET /api/v1/targets")
            && run.output.contains("Response violates schema")
            && run.output.contains("polls"),
        "the failure does not name the operation and the field:\n{}",
        run.output
    );
}
