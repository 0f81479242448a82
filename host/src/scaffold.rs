//! `vigil new`: a rule project to start from, in Rust, Python or JavaScript:
//! a threshold rule, the contract, a `vigil test` case file it passes, and
//! the build setup of its language.
//!
//! What it guarantees: the project's `wit/vigil.wit` is the contract this
//! binary serves (embedded when the host is compiled), and the toolchain
//! versions are the ones this repository's own rules are built with (a unit
//! test keeps them equal). What it refuses: writing into a folder that is not
//! empty, and a name that would not work as a folder, crate, npm package and
//! file name alike.
//!
//! The templates sit in `scaffold/`; `{{key}}` in them is replaced by
//! [`create`], and nothing else is interpreted.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, bail};

use crate::names::Syntax;
use crate::runtime::WIT_VERSION;

/// The contract this host serves, copied into every project.
const WIT: &str = include_str!("../../wit/vigil.wit");

/// `wit-bindgen` as the workspace `Cargo.toml` pins it for `plugins/sdk`.
pub const WIT_BINDGEN_VERSION: &str = "0.61.1";
/// `componentize-py` as `plugins/python/requirements.txt` pins it.
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";
/// `componentize-qjs` as `plugins/js/package.json` pins it.
pub const COMPONENTIZE_QJS_VERSION: &str = "0.4.5";

/// The language of a new rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust with `wit-bindgen`, built by cargo for `wasm32-wasip2`.
    Rust,
    /// Python, built by `componentize-py`.
    Python,
    /// JavaScript (an ES module), built by `componentize-qjs`.
    Js,
}

impl Lang {
    /// The language's name for people.
    pub fn label(self) -> &'static str {
        match self {
            Lang::Rust => "Rust",
            Lang::Python => "Python",
            Lang::Js => "JavaScript",
        }
    }

    /// The file with the rule's code.
    fn source(self) -> &'static str {
        match self {
            Lang::Rust => "src/lib.rs",
            Lang::Python => "app.py",
            Lang::Js => "rule.js",
        }
    }

    /// Where the build puts the component, relative to the project.
    fn wasm(self, name: &RuleName) -> String {
        match self {
            // Cargo names the library after the crate, with `_` for `-`.
            Lang::Rust => format!(
                "target/wasm32-wasip2/release/{}.wasm",
                name.0.replace('-', "_")
            ),
            Lang::Python | Lang::Js => format!("{}.wasm", name.0),
        }
    }

    /// The commands, run in the project, that install the toolchain and
    /// build the component.
    fn build(self, name: &RuleName) -> Vec<String> {
        match self {
            Lang::Rust => vec![
                "rustup target add wasm32-wasip2".into(),
                "cargo build --release --target wasm32-wasip2".into(),
            ],
            Lang::Python => vec![
                "python3 -m pip install -r requirements.txt".into(),
                format!("componentize-py -d wit -w rule componentize app -o {name}.wasm"),
            ],
            Lang::Js => vec!["npm install".into(), "npm run build".into()],
        }
    }

    /// The project's files besides the shared ones, as (path, template).
    fn templates(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Lang::Rust => &[
                // Not `Cargo.toml` in the host's tree: cargo and editors would
                // take the template for a real package.
                ("Cargo.toml", include_str!("scaffold/rust/Cargo.toml.tmpl")),
                ("src/lib.rs", include_str!("scaffold/rust/lib.rs")),
            ],
            Lang::Python => &[
                ("app.py", include_str!("scaffold/python/app.py")),
                // The glue this repository's own Python rules use.
                (
                    "vigil_rule.py",
                    include_str!("../../plugins/python/vigil_rule.py"),
                ),
                (
                    "requirements.txt",
                    "componentize-py=={{componentize_py_version}}\n",
                ),
            ],
            Lang::Js => &[
                ("package.json", include_str!("scaffold/js/package.json")),
                ("rule.js", include_str!("scaffold/js/rule.js")),
                // The glue this repository's own JavaScript rules use.
                ("vigil.js", include_str!("../../plugins/js/vigil.js")),
            ],
        }
    }

    /// What the build leaves behind that is not source.
    fn gitignore(self) -> &'static str {
        match self {
            Lang::Rust => "/target\n",
            Lang::Python => "*.wasm\n__pycache__/\n",
            Lang::Js => "*.wasm\nnode_modules/\n",
        }
    }
}

/// A rule project's name, [`Syntax::Slug`] (`[a-z][a-z0-9-]*`), so that it
/// works unchanged as a folder, a crate, an npm package, a `.wasm` file and
/// the name in `rule-info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleName(String);

impl FromStr for RuleName {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if !Syntax::Slug.accepts(text) {
            return Err(format!(
                "`{text}` is not a rule name\n\
                 hint: use lowercase letters, digits and `-`, starting with a letter, e.g. `disk-full`"
            ));
        }
        Ok(RuleName(text.to_string()))
    }
}

impl std::fmt::Display for RuleName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A project written by [`create`].
#[derive(Debug)]
pub struct Project {
    /// The project's folder.
    pub dir: PathBuf,
    /// The files written, relative to `dir`.
    pub files: Vec<String>,
    /// Commands, run in `dir`, that install the toolchain and build the rule.
    pub build: Vec<String>,
}

/// Writes a new `lang` rule project into `parent/name`, which may exist only
/// as an empty folder.
pub fn create(lang: Lang, name: &RuleName, parent: &Path) -> anyhow::Result<Project> {
    let dir = parent.join(&name.0);
    if dir.is_file() {
        bail!(
            "`{}` already exists and is a file\nhint: choose another name or --dir",
            dir.display()
        );
    }
    let not_empty = dir.is_dir()
        && std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read `{}`", dir.display()))?
            .next()
            .is_some();
    if not_empty {
        bail!(
            "`{}` already exists and is not empty\nhint: choose another name or --dir, or remove it",
            dir.display()
        );
    }

    let build = lang.build(name);
    let wasm = lang.wasm(name);
    let build_lines = build.join("\n");
    // What `npm run build` runs: package.json's `build` script.
    let js_build =
        format!("componentize-qjs --sync --wit wit --world rule --js rule.js -o {name}.wasm");
    let vars = [
        ("name", name.0.as_str()),
        ("lang", lang.label()),
        ("source", lang.source()),
        ("wasm", &wasm),
        ("build", &build_lines),
        ("js_build", &js_build),
        ("wit_version", WIT_VERSION),
        ("wit_bindgen_version", WIT_BINDGEN_VERSION),
        ("componentize_py_version", COMPONENTIZE_PY_VERSION),
        ("componentize_qjs_version", COMPONENTIZE_QJS_VERSION),
    ];
    let mut files: Vec<(&str, String)> = lang
        .templates()
        .iter()
        .map(|(path, template)| (*path, render(template, &vars)))
        .collect();
    files.extend([
        ("wit/vigil.wit", WIT.to_string()),
        (
            "cases.toml",
            render(include_str!("scaffold/cases.toml"), &vars),
        ),
        (
            "README.md",
            render(include_str!("scaffold/README.md"), &vars),
        ),
        (".gitignore", lang.gitignore().to_string()),
    ]);

    for (path, text) in &files {
        let file = dir.join(path);
        if let Some(folder) = file.parent() {
            std::fs::create_dir_all(folder)
                .with_context(|| format!("cannot create `{}`", folder.display()))?;
        }
        std::fs::write(&file, text)
            .with_context(|| format!("cannot write `{}`", file.display()))?;
    }
    Ok(Project {
        dir,
        files: files
            .into_iter()
            .map(|(path, _)| path.to_string())
            .collect(),
        build,
    })
}

/// Replaces every `{{key}}` in `template`.
fn render(template: &str, vars: &[(&str, &str)]) -> String {
    vars.iter()
        .fold(template.to_string(), |text, (key, value)| {
            text.replace(&format!("{{{{{key}}}}}"), value)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> RuleName {
        text.parse().unwrap()
    }

    #[test]
    fn names_are_lowercase_words_joined_by_dashes() {
        assert_eq!(name("disk-full2").to_string(), "disk-full2");
        for bad in [
            "",
            "Disk",
            "disk_full",
            "2disk",
            "-disk",
            "disk full",
            "dïsk",
            "../x",
        ] {
            let error = bad.parse::<RuleName>().unwrap_err();
            assert!(
                error.starts_with(&format!("`{bad}` is not a rule name\n")),
                "{error}"
            );
        }
    }

    #[test]
    fn every_placeholder_is_filled() {
        for lang in [Lang::Rust, Lang::Python, Lang::Js] {
            let dir = tempfile::tempdir().unwrap();
            let project = create(lang, &name("disk-full"), dir.path()).unwrap();
            for file in &project.files {
                let text = std::fs::read_to_string(project.dir.join(file)).unwrap();
                assert!(!text.contains("{{"), "{lang:?} {file}: {text}");
            }
        }
    }

    #[test]
    fn the_contract_and_the_host_agree() {
        assert!(WIT.contains(&format!("package vigil:rules@{WIT_VERSION};")));
        let dir = tempfile::tempdir().unwrap();
        let project = create(Lang::Js, &name("x"), dir.path()).unwrap();
        let wit = std::fs::read_to_string(project.dir.join("wit/vigil.wit")).unwrap();
        assert_eq!(wit, WIT);
        // Unversioned, so the version is the one of the WIT it is built against.
        let rule = std::fs::read_to_string(project.dir.join("rule.js")).unwrap();
        assert!(rule.contains("from \"vigil:rules/host\";"), "{rule}");
    }

    /// The pins above and the files this repository builds its own rules
    /// with must not drift apart.
    #[test]
    fn toolchain_versions_match_the_repository() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let read = |path: &str| std::fs::read_to_string(root.join(path)).unwrap();
        assert!(
            read("Cargo.toml").contains(&format!(
                "wit-bindgen = {{ version = \"{WIT_BINDGEN_VERSION}\""
            )),
            "update WIT_BINDGEN_VERSION to the workspace's wit-bindgen"
        );
        assert_eq!(
            read("plugins/python/requirements.txt").trim(),
            format!("componentize-py=={COMPONENTIZE_PY_VERSION}")
        );
        assert!(
            read("plugins/js/package.json").contains(&format!(
                "\"componentize-qjs\": \"{COMPONENTIZE_QJS_VERSION}\""
            )),
            "update COMPONENTIZE_QJS_VERSION to plugins/js/package.json's"
        );
    }

    #[test]
    fn refuses_a_folder_that_is_not_empty() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("empty")).unwrap();
        create(Lang::Rust, &name("empty"), dir.path()).expect("an empty folder is fine");
        let error = create(Lang::Rust, &name("empty"), dir.path()).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "`{}` already exists and is not empty\nhint: choose another name or --dir, or remove it",
                dir.path().join("empty").display()
            )
        );
    }
}
