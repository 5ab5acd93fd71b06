//! The pass-through properties file (`KAFKA_PROPERTIES_FILE`), in the Java `key=value` syntax Kafka
//! users already keep. Pure: text in, pairs out.
//!
//! Accepted: `key=value`, `key: value` and `key value`; blank lines; comment lines starting with `#`
//! or `!`; a line ending in `\` continues on the next one. Escapes other than that are not
//! interpreted. Errors give the line number only: a value may be a secret.

/// A line of the file that is not a property.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct PropertiesError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong (never the line's text).
    pub problem: &'static str,
}

/// Parses the file's text into `(key, value)` pairs, in file order.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, PropertiesError> {
    let mut pairs = Vec::new();
    let mut logical = String::new();
    let mut first_line = 0;
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        if logical.is_empty() {
            if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
                continue;
            }
            first_line = index + 1;
        }
        match line.strip_suffix('\\') {
            Some(head) => logical.push_str(head),
            None => {
                logical.push_str(line);
                pairs.push(split(&logical, first_line)?);
                logical.clear();
            }
        }
    }
    if !logical.is_empty() {
        pairs.push(split(&logical, first_line)?);
    }
    Ok(pairs)
}

/// Splits one logical line at the first `=`, `:` or whitespace.
fn split(line: &str, number: usize) -> Result<(String, String), PropertiesError> {
    let at = line.find(['=', ':', ' ', '\t']);
    let (key, value) = match at {
        Some(i) => {
            let rest = line[i..].trim_start();
            let rest = rest.strip_prefix(['=', ':']).unwrap_or(rest);
            (line[..i].trim_end(), rest.trim())
        }
        None => (line.trim_end(), ""),
    };
    if key.is_empty() {
        return Err(PropertiesError { line: number, problem: "no key before the separator" });
    }
    if value.is_empty() {
        return Err(PropertiesError { line: number, problem: "no value (write key=value)" });
    }
    Ok((key.to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(text: &str) -> Vec<(String, String)> {
        parse(text).unwrap()
    }

    #[test]
    fn the_three_separators_comments_and_blank_lines_are_accepted() {
        let text = "# comment\n! also a comment\n\n  client.rack = eu-west-1a\nssl.cipher.suites: ECDHE\n\
                    socket.keepalive.enable true\n";
        assert_eq!(
            pairs(text),
            vec![
                ("client.rack".into(), "eu-west-1a".into()),
                ("ssl.cipher.suites".into(), "ECDHE".into()),
                ("socket.keepalive.enable".into(), "true".into()),
            ]
        );
    }

    #[test]
    fn a_value_keeps_later_separators_and_a_backslash_continues_the_line() {
        assert_eq!(
            pairs("sasl.oauthbearer.extensions=a=1,\\\n    b=2\nx=y:z\n"),
            vec![("sasl.oauthbearer.extensions".into(), "a=1,b=2".into()), ("x".into(), "y:z".into())]
        );
    }

    #[test]
    fn errors_give_the_line_number_but_never_the_text() {
        let err = parse("a=1\n\nsasl.password\n").unwrap_err();
        assert_eq!(err, PropertiesError { line: 3, problem: "no value (write key=value)" });
        assert!(!err.to_string().contains("sasl.password"));
        assert_eq!(parse("=secret\n").unwrap_err().line, 1);
    }
}
