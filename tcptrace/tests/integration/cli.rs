//! Bad input: one line on stderr, exit status 2, nothing on stdout, no panic.

use crate::common::run;

#[test]
fn bad_flags_and_values_are_one_line_and_exit_2() {
    let cases: &[&[&str]] = &[
        &["watch", "-4", "-6"],
        &["watch", "--state", "CLOSE_WAT"],
        &["watch", "-L", "80,http"],
        &["watch", "-D", "0"],
        &["watch", "-L", "70000"],
        &["watch", "--duration", "soon"],
        &["watch", "--duration", "0"],
        &["watch", "--duration", "-1"],
        &["watch", "-p", "abc"],
        &["watch", "--ring-size", "1000"],
        &["watch", "--max-sockets", "0"],
        &["leaks", "--interval", "0"],
        &["leaks", "--min-count", "0"],
        &["hist", "0"],
        &["hist", "0.01"],
        &["hist", "soon"],
        &["hist", "1", "0"],
        &["hist", "1", "-3"],
        &["hist", "1", "2", "3"],
        &["hist", "--by", "port"],
        &["hist", "--handshake", "close"],
        &["hist", "--state", "CLOSED"],
        &["hist", "-4", "-6"],
        &["hist", "-L", "0"],
        &["hist", "--ring-size", "1000"],
        &["serve", "--listen", "300.1.1.1:10180"],
        &["serve", "--listen", ":10180"],
        &["serve", "--listen", "127.0.0.1:99999"],
        &["serve", "--listen", "example.com:80"],
        &["serve", "--listen", ""],
        &["serve", "--top", "0"],
        &["serve", "--interval", "0"],
        &["frobnicate"],
        &[],
    ];
    for args in cases {
        let out = run(args);
        assert_eq!(out.code, Some(2), "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {:?}", out.stderr);
        assert!(
            out.stderr.starts_with("tcptrace: "),
            "{args:?}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("panicked"), "{args:?}");
        assert!(out.lines.is_empty(), "{args:?} printed {:?}", out.lines);
    }
}

#[test]
fn help_lists_examples_and_exit_codes() {
    let out = run(&["--help"]);
    assert_eq!(out.code, Some(0));
    let text = out.lines.join("\n");
    assert!(text.contains("EXAMPLES"), "{text}");
    assert!(text.contains("EXIT STATUS"), "{text}");
    let out = run(&["watch", "--help"]);
    assert_eq!(out.code, Some(0));
    assert!(out.lines.join("\n").contains("--rport"));
}

#[test]
fn without_privileges_it_names_the_capabilities() {
    // Drop to nobody with no capabilities at all.
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(crate::common::BIN)
        .args(["watch", "--duration", "1"])
        .output()
        .expect("setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("CAP_BPF") && stderr.contains("CAP_PERFMON"),
        "{stderr}"
    );
}
