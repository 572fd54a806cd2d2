//! What the commands print: aligned tables on stdout.

use crate::deploy::Report;
use crate::layout::HostState;

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

/// The summary after a deploy: one row per host.
pub fn deploy_summary(r: &Report) -> String {
    let mut rows = vec![vec![
        "HOST".to_owned(),
        "RELEASE".into(),
        "SENT".into(),
        "LINKED".into(),
        "RESULT".into(),
    ]];
    for h in &r.hosts {
        let result = match &h.failure {
            Some(f) => format!("{}; FAILED at {}: {}", h.result, f.stage, f.message),
            None => h.result.clone(),
        };
        rows.push(vec![
            h.name.clone(),
            if r.release.is_empty() {
                "-".into()
            } else {
                r.release.clone()
            },
            format!("{} files, {}", h.sent_files, bytes(h.sent_bytes)),
            format!("{} files", h.linked_files),
            result,
        ]);
    }
    let mut out = table(&rows);
    for h in &r.hosts {
        for w in &h.warnings {
            out.push_str(&format!("\nwarning: {}: {w}", h.name));
        }
    }
    out
}

/// `releases`: a table per host, the current release and bad ones marked.
pub fn releases(name: &str, deploy_to: &str, st: &HostState) -> String {
    let mut out = format!("{name} ({deploy_to})\n");
    if !st.exists || st.releases.is_empty() {
        out.push_str("  no releases\n");
        return out;
    }
    let mut rows = vec![vec![
        String::new(),
        "RELEASE".into(),
        "REVISION".into(),
        "STATUS".into(),
    ]];
    for r in &st.releases {
        let current = st.current.as_deref() == Some(r.name.as_str());
        let mut status = Vec::new();
        if current {
            status.push("current".to_owned());
        }
        if let Some(why) = &r.bad {
            status.push(format!("bad ({why})"));
        }
        if !r.complete {
            status.push("incomplete".into());
        }
        rows.push(vec![
            if current { "*".into() } else { " ".into() },
            r.name.clone(),
            if r.revision.is_empty() {
                "-".into()
            } else {
                r.revision.clone()
            },
            status.join(", "),
        ]);
    }
    for line in table(&rows).lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    if let Some(l) = &st.lock {
        out.push_str(&format!("  locked by {l}\n"));
    }
    out
}
