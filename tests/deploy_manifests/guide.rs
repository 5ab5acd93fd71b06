//! The operator's guide in `README.md`: every setting appears with its default, every command shown parses with
//! its flags.

use std::collections::BTreeMap;

use crate::support::*;

#[test]
fn the_guide_documents_every_setting_with_its_default() {
    let guide = read(GUIDE);
    let documented: BTreeMap<String, String> = guide
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_').then(|| {
                (name.to_owned(), cells.get(2).map(|d| d.trim_matches('`').to_owned()).unwrap_or_default())
            })
        })
        .collect();
    let mut expected = accepted(&["run"]);
    expected.extend(env_vars_in(&help(&["publish"])));
    for (var, default) in &expected {
        let doc = documented.get(var).unwrap_or_else(|| panic!("{GUIDE} has no table row for {var}"));
        if let Some(default) = default {
            assert_eq!(doc, default, "{GUIDE}: default of {var}");
        }
    }
}

/// `card-registrar ...` command lines of the guide (inline code and code blocks).
fn guide_commands() -> Vec<Vec<String>> {
    let guide = read(GUIDE);
    let mut commands = Vec::new();
    for chunk in guide.split("card-registrar ").skip(1) {
        // A table cell's `list\|retry` ends at the escaped pipe: the first word is checked.
        let line = chunk.split(['`', '\n', '|', '\\', '#', ';', ')']).next().unwrap_or_default();
        let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        let known = ["run", "migrate", "card", "outbox", "dead-letters", "publish"];
        if words.first().is_some_and(|w| known.contains(&w.as_str())) {
            commands.push(words);
        }
    }
    commands
}

#[test]
fn every_command_the_guide_shows_parses_with_its_flags() {
    let commands = guide_commands();
    assert!(commands.len() >= 8, "only {} commands found in {GUIDE}", commands.len());
    for words in commands {
        let path: Vec<&str> = words
            .iter()
            .map(String::as_str)
            .take_while(|w| !w.starts_with('-') && !w.starts_with('<'))
            .collect();
        let path: Vec<&str> = match path.as_slice() {
            // `card show <id>`, `outbox retry <id>`: a positional argument follows two words.
            [a, b, ..] if ["card", "outbox", "dead-letters"].contains(a) => vec![a, b],
            [a, ..] => vec![a],
            [] => continue,
        };
        let text = help(&path);
        for flag in words.iter().filter(|w| w.starts_with("--")) {
            let flag = flag.split('=').next().unwrap_or(flag);
            assert!(
                text.contains(&format!("{flag} ")) || text.contains(&format!("{flag}\n")),
                "`card-registrar {}`: {flag} is not an option",
                words.join(" ")
            );
        }
    }
}
