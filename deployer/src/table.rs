//! Aligned text tables and byte counts, as every command prints them. A leaf: no crate imports.

use std::fmt::Display;

/// Left-aligned columns, two spaces apart, no trailing blanks.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            r.iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A `HOST RESULT` table: what happened on each host, `FAILED <why>` where it failed.
pub fn host_results<'a, E: Display + 'a>(
    rows: impl IntoIterator<Item = (&'a str, Result<String, &'a E>)>,
) -> String {
    let mut out = vec![vec!["HOST".to_owned(), "RESULT".to_owned()]];
    for (host, r) in rows {
        out.push(vec![
            host.to_owned(),
            r.unwrap_or_else(|e| format!("FAILED {e}")),
        ]);
    }
    table(&out)
}

/// After a table: one `warning: <host>: <what>` line per warning, each starting a new line.
pub fn warnings<'a>(hosts: impl IntoIterator<Item = (&'a str, &'a [String])>) -> String {
    hosts
        .into_iter()
        .flat_map(|(host, ws)| ws.iter().map(move |w| format!("\nwarning: {host}: {w}")))
        .collect()
}

/// `512 B`, `1.5 KiB`, `3.2 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_align_without_trailing_blanks() {
        let rows = vec![
            vec!["HOST".to_owned(), "RESULT".into()],
            vec!["app1.example.com".into(), "ok".into()],
        ];
        assert_eq!(
            super::table(&rows),
            "HOST              RESULT\napp1.example.com  ok"
        );
        assert_eq!(super::bytes(512), "512 B");
        assert_eq!(super::bytes(1536), "1.5 KiB");
    }
}
