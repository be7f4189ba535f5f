//! End-to-end: where copies go (directory semantics on both sides), several
//! sources, remote globs, and `skiff cp` in every spec form, through the
//! real binary.

mod common;

use std::fs;
use std::path::Path;

use common::{fails_with, ok, p, run, stderr, text, TestServer};

fn write(path: &Path, contents: &str) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, contents).unwrap();
}

fn fails_saying(o: &std::process::Output, what: &str) {
    assert_eq!(o.status.code(), Some(1), "stderr: {}", stderr(o));
    assert!(stderr(o).contains(what), "expected {what:?}: {}", stderr(o));
}

#[test]
fn put_destinations_follow_cp_semantics() {
    let server = TestServer::start(&[]);
    let url = server.url();
    let root = &server.root;
    let work = tempfile::tempdir().unwrap();
    let f = work.path().join("big.iso");
    write(&f, "iso");
    let g = work.path().join("g.txt");
    write(&g, "g");
    let site = work.path().join("site");
    write(&site.join("index.html"), "<html>");
    write(&site.join("css/a.css"), "a{}");

    // `backup/` is a directory: created when missing, the file goes in.
    ok(&run(&server, &["put", url, p(&f), "backup/"]));
    assert_eq!(
        fs::read_to_string(root.join("backup/big.iso")).unwrap(),
        "iso"
    );
    // Without the slash, an existing directory is entered too.
    ok(&run(&server, &["put", url, p(&g), "backup"]));
    assert!(root.join("backup/g.txt").is_file());
    // A file destination stays a file; with a slash it is an error.
    ok(&run(&server, &["put", url, p(&f), "plain.iso"]));
    assert!(root.join("plain.iso").is_file());
    let o = run(&server, &["put", url, p(&g), "plain.iso/"]);
    fails_saying(&o, "not a directory");
    assert_eq!(fs::read_to_string(root.join("plain.iso")).unwrap(), "iso");
    // Only the last component of a directory destination is created.
    let o = run(&server, &["put", url, p(&f), "a/b/"]);
    fails_saying(&o, "mkdir -p");
    assert!(!root.join("a").exists());

    // -r: a missing DST becomes the copy; an existing one is entered.
    ok(&run(&server, &["put", "-r", url, p(&site), "www"]));
    assert_eq!(
        fs::read_to_string(root.join("www/index.html")).unwrap(),
        "<html>"
    );
    assert!(root.join("www/css/a.css").is_file());
    ok(&run(&server, &["put", "-r", url, p(&site), "www"]));
    assert!(root.join("www/site/css/a.css").is_file());
    // Flags may follow TARGET, as they always could.
    ok(&run(&server, &["put", url, "-f", p(&f), "backup/"]));
    let o = run(&server, &["put", url, p(&f)]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // A trailing slash on the source changes nothing (as cp and scp).
    ok(&run(
        &server,
        &["put", "-r", url, &format!("{}/", p(&site)), "new/"],
    ));
    assert!(root.join("new/site/index.html").is_file());
    // A tree without -r is refused, naming the flag.
    fails_saying(&run(&server, &["put", url, p(&site), "x"]), "-r");

    // Several sources need a directory.
    let o = run(&server, &["put", url, p(&f), p(&g), "many"]);
    fails_saying(&o, "several sources");
    ok(&run(&server, &["put", url, p(&f), p(&g), "many/"]));
    assert!(root.join("many/big.iso").is_file() && root.join("many/g.txt").is_file());
    fails_saying(
        &run(&server, &["put", url, p(&f), p(&g), "plain.iso"]),
        "not a directory",
    );
    // One missing source fails; the others are still copied.
    let missing = work.path().join("missing");
    let o = run(&server, &["put", "-f", url, p(&missing), p(&g), "many/"]);
    fails_saying(&o, "missing");
    assert!(root.join("many/g.txt").is_file());

    // stat with a trailing slash asks for a directory.
    let o = run(&server, &["stat", url, "backup/"]);
    ok(&o);
    assert!(text(&o.stdout).contains("type: dir"), "{}", text(&o.stdout));
    fails_saying(
        &run(&server, &["stat", url, "plain.iso/"]),
        "not a directory",
    );
    let o = run(&server, &["stat", "--json", url, "backup/"]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["kind"], "dir");
    let o = run(&server, &["ls", "--json", url, "backup"]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(2), "{v}");
}

#[test]
fn get_destinations_follow_cp_semantics() {
    let server = TestServer::start(&[]);
    let url = server.url();
    let root = &server.root;
    write(&root.join("backup/big.iso"), "iso");
    write(&root.join("www/index.html"), "<html>");
    write(&root.join("www/css/a.css"), "a{}");
    let work = tempfile::tempdir().unwrap();
    let w = |name: &str| work.path().join(name);

    let newdir = format!("{}/", p(&w("newdir")));
    ok(&run(&server, &["get", url, "backup/big.iso", &newdir]));
    assert_eq!(fs::read_to_string(w("newdir/big.iso")).unwrap(), "iso");
    ok(&run(
        &server,
        &["get", url, "backup/big.iso", p(&w("as-file"))],
    ));
    assert!(w("as-file").is_file());
    let o = run(
        &server,
        &[
            "get",
            url,
            "backup/big.iso",
            &format!("{}/", p(&w("as-file"))),
        ],
    );
    fails_saying(&o, "not a directory");
    let o = run(
        &server,
        &["get", url, "backup/big.iso", &format!("{}/", p(&w("x/y")))],
    );
    fails_saying(&o, "mkdir -p");
    assert!(!w("x").exists());

    ok(&run(&server, &["get", "-r", url, "www", p(&w("site"))]));
    assert!(w("site/css/a.css").is_file());
    ok(&run(&server, &["get", "-r", url, "www", p(&w("site"))]));
    assert!(w("site/www/css/a.css").is_file());
    fails_saying(&run(&server, &["get", url, "www", p(&w("nope"))]), "-r");

    // Several sources into a directory; one missing does not stop the rest.
    let o = run(
        &server,
        &["get", url, "backup/big.iso", "www/index.html", p(&w("two"))],
    );
    fails_saying(&o, "several sources");
    let two = format!("{}/", p(&w("two")));
    ok(&run(
        &server,
        &["get", url, "backup/big.iso", "www/index.html", &two],
    ));
    assert!(w("two/big.iso").is_file() && w("two/index.html").is_file());
    let o = run(
        &server,
        &["get", "-f", url, "nothere", "www/index.html", &two],
    );
    fails_with(&o, "not_found");
}

#[test]
fn remote_globs_are_expanded_by_the_server_inside_the_root() {
    let server = TestServer::start(&[]);
    let url = server.url();
    let root = &server.root;
    write(&root.join("logs/a.log"), "a");
    write(&root.join("logs/b.log"), "b");
    write(&root.join("logs/c.txt"), "c");
    write(&root.join("logs/.hidden.log"), "h");
    write(&root.join("logs/old/d.log"), "d");
    let outside = tempfile::tempdir().unwrap();
    write(&outside.path().join("secret.log"), "secret");
    std::os::unix::fs::symlink(outside.path(), root.join("logs/out")).unwrap();
    std::os::unix::fs::symlink(outside.path(), root.join("out")).unwrap();
    let work = tempfile::tempdir().unwrap();
    let dest = format!("{}/", p(&work.path().join("got")));

    ok(&run(&server, &["get", url, "logs/*.log", &dest]));
    let mut names: Vec<String> = fs::read_dir(work.path().join("got"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a.log", "b.log"]);
    // Patterns over several components; globs in the middle.
    let dest2 = format!("{}/", p(&work.path().join("deep")));
    ok(&run(&server, &["get", url, "l?gs/*/*.log", &dest2]));
    assert!(work.path().join("deep/d.log").is_file());
    assert!(
        !work.path().join("deep/secret.log").exists(),
        "a link out is never entered"
    );
    // No match, a pattern that climbs, a literal part through a link out.
    fails_with(
        &run(&server, &["get", url, "logs/*.nope", &dest]),
        "not_found",
    );
    for escape in ["../*", "logs/../../*", "/../*", "out/*", "logs/out/*"] {
        let o = run(&server, &["get", url, escape, &dest]);
        assert_eq!(o.status.code(), Some(1), "{escape}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("path_escape") || stderr(&o).contains("not_found"),
            "{escape}: {}",
            stderr(&o)
        );
    }
    assert!(!work.path().join("got/secret.log").exists());
    // A glob of one match into a non-directory destination is fine.
    ok(&run(
        &server,
        &["get", url, "logs/a.l?g", p(&work.path().join("single"))],
    ));
    assert_eq!(fs::read_to_string(work.path().join("single")).unwrap(), "a");
}

/// The port of a server's first listener.
fn port_of(server: &TestServer) -> String {
    server.url().rsplit(':').next().unwrap().to_string()
}

/// The user name in a server's client key file.
fn user_of(server: &TestServer) -> String {
    let line = fs::read_to_string(&server.key_file).unwrap();
    line.split_whitespace().next().unwrap().to_string()
}

#[test]
fn cp_takes_every_remote_spec_form() {
    let server = TestServer::start_listening(&["tcp://127.0.0.1:0", "tcp://[::1]:0"], &[]);
    let port = port_of(&server);
    let v6_port = server.urls[1].rsplit(':').next().unwrap().to_string();
    let user = user_of(&server);
    let root = &server.root;
    let work = tempfile::tempdir().unwrap();
    let f = work.path().join("notes.txt");
    write(&f, "notes");
    let colon = work.path().join("a:b");
    write(&colon, "colon");

    ok(&run(
        &server,
        &["cp", "-p", &port, p(&f), "127.0.0.1:inbox/"],
    ));
    assert_eq!(
        fs::read_to_string(root.join("inbox/notes.txt")).unwrap(),
        "notes"
    );
    ok(&run(
        &server,
        &["cp", "-P", &port, p(&f), &format!("{user}@127.0.0.1:u.txt")],
    ));
    assert!(root.join("u.txt").is_file());
    ok(&run(
        &server,
        &["cp", "-p", &v6_port, p(&f), "[::1]:v6.txt"],
    ));
    assert!(root.join("v6.txt").is_file());
    ok(&run(
        &server,
        &[
            "cp",
            p(&f),
            &format!("skiff://{user}@127.0.0.1:{port}/url.txt"),
        ],
    ));
    assert!(root.join("url.txt").is_file());
    ok(&run(
        &server,
        &["cp", p(&f), &format!("skiff://[::1]:{v6_port}/")],
    ));
    assert!(root.join("notes.txt").is_file());
    // A local name with a colon, written ./name; and as a destination.
    let o = server
        .client()
        .current_dir(work.path())
        .args(["cp", "-p", &port, "./a:b", "127.0.0.1:c/"])
        .output()
        .unwrap();
    ok(&o);
    assert_eq!(fs::read_to_string(root.join("c/a:b")).unwrap(), "colon");
    let o = server
        .client()
        .current_dir(work.path())
        .args(["cp", "-p", &port, "127.0.0.1:u.txt", "./x:y"])
        .output()
        .unwrap();
    ok(&o);
    assert_eq!(
        fs::read_to_string(work.path().join("x:y")).unwrap(),
        "notes"
    );
    // Several sources, and back.
    let g = work.path().join("g.txt");
    write(&g, "g");
    ok(&run(
        &server,
        &["cp", "-p", &port, p(&f), p(&g), "127.0.0.1:two/"],
    ));
    let back = format!("{}/", p(&work.path().join("back")));
    ok(&run(
        &server,
        &[
            "cp",
            "-p",
            &port,
            "127.0.0.1:two/notes.txt",
            "127.0.0.1:two/g.txt",
            &back,
        ],
    ));
    assert!(work.path().join("back/g.txt").is_file());
    ok(&run(
        &server,
        &[
            "cp",
            "-p",
            &port,
            "127.0.0.1:two/*.txt",
            &format!("{}/", p(&work.path().join("glob"))),
        ],
    ));
    assert!(
        work.path().join("glob/notes.txt").is_file() && work.path().join("glob/g.txt").is_file()
    );
    // A tree, and local-only or mixed copies are usage errors.
    let site = work.path().join("site");
    write(&site.join("css/a.css"), "a");
    ok(&run(
        &server,
        &["cp", "-r", "-p", &port, p(&site), "127.0.0.1:www"],
    ));
    assert!(root.join("www/css/a.css").is_file());
    let o = run(&server, &["cp", p(&f), p(&g)]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("cp(1)"), "{}", stderr(&o));
    let o = run(
        &server,
        &["cp", "-p", &port, p(&f), "127.0.0.1:u.txt", p(&g)],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn cp_stdin_and_stdout() {
    use std::io::Write as _;
    use std::process::Stdio;
    let server = TestServer::start(&[]);
    let port = port_of(&server);
    let root = &server.root;
    // 3 MiB and a bit through stdin: spooled, uploaded, verified.
    let data: Vec<u8> = (0..(3u32 << 20) + 17)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let mut child = server
        .client()
        .args(["cp", "-p", &port, "-", "127.0.0.1:in/piped.bin"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    fs::create_dir(root.join("in")).unwrap();
    child.stdin.take().unwrap().write_all(&data).unwrap();
    let o = child.wait_with_output().unwrap();
    ok(&o);
    assert_eq!(fs::read(root.join("in/piped.bin")).unwrap(), data);
    // stdin into a directory has no name to use.
    let o = server
        .client()
        .args(["cp", "-p", &port, "-", "127.0.0.1:in/"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    fails_saying(&o, "standard input has no name");
    // To stdout, byte for byte; several files concatenate.
    write(&root.join("in/b.txt"), "bee\n");
    let o = run(&server, &["cp", "-p", &port, "127.0.0.1:in/piped.bin", "-"]);
    ok(&o);
    assert!(
        o.stdout == data,
        "stdout differs ({} bytes)",
        o.stdout.len()
    );
    let o = run(
        &server,
        &[
            "cp",
            "-p",
            &port,
            "127.0.0.1:in/b.txt",
            "127.0.0.1:in/b.txt",
            "-",
        ],
    );
    ok(&o);
    assert_eq!(text(&o.stdout), "bee\nbee\n");
    let o = run(&server, &["cp", "-p", &port, "127.0.0.1:in", "-"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let o = run(&server, &["cp", "-r", "-p", &port, "127.0.0.1:in", "-"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn cp_remote_to_remote_streams_through_the_client() {
    let a = TestServer::start(&[]);
    // B accepts the same users, so one key file serves both.
    let users = a.home.path().join(".local/state/skiff/users");
    let b = TestServer::start(&["--users", p(&users)]);
    let (pa, pb) = (port_of(&a), port_of(&b));
    let ua = |path: &str| format!("skiff://127.0.0.1:{pa}/{path}");
    let ub = |path: &str| format!("skiff://127.0.0.1:{pb}/{path}");
    common::make_file(&a.root.join("db.dump"), (5 << 20) + 3, 7);
    write(&a.root.join("site/index.html"), "<html>");
    write(&a.root.join("site/css/a.css"), "a{}");
    std::os::unix::fs::symlink("css/a.css", a.root.join("site/style")).unwrap();
    write(&a.root.join("logs/1.log"), "1");
    write(&a.root.join("logs/2.log"), "2");

    ok(&run(&a, &["cp", &ua("db.dump"), &ub("restore/")]));
    assert_eq!(
        common::hash(&b.root.join("restore/db.dump")),
        common::hash(&a.root.join("db.dump"))
    );
    // Without -f an existing file is refused, and stays as it was.
    fails_with(
        &run(&a, &["cp", &ua("logs/1.log"), &ub("restore/db.dump")]),
        "exists",
    );
    assert_eq!(
        fs::metadata(b.root.join("restore/db.dump")).unwrap().len(),
        (5 << 20) + 3
    );
    ok(&run(
        &a,
        &["cp", "-f", &ua("logs/1.log"), &ub("restore/db.dump")],
    ));
    assert_eq!(
        fs::read_to_string(b.root.join("restore/db.dump")).unwrap(),
        "1"
    );
    // Trees (with their link), globs, and a tree without -r.
    ok(&run(&a, &["cp", "-r", &ua("site"), &ub("www")]));
    assert_eq!(
        fs::read_to_string(b.root.join("www/css/a.css")).unwrap(),
        "a{}"
    );
    assert_eq!(
        fs::read_link(b.root.join("www/style")).unwrap(),
        Path::new("css/a.css")
    );
    ok(&run(&a, &["cp", &ua("logs/*.log"), &ub("logs/")]));
    assert!(b.root.join("logs/1.log").is_file() && b.root.join("logs/2.log").is_file());
    fails_saying(&run(&a, &["cp", &ua("site"), &ub("x")]), "-r");
    // The same server on both sides works too (a copy on the server).
    ok(&run(&a, &["cp", &ua("logs/1.log"), &ua("copy.log")]));
    assert_eq!(fs::read_to_string(a.root.join("copy.log")).unwrap(), "1");
    assert!(common::leftovers(&b.root).is_empty());
}

/// Progress is drawn only on a terminal (here a pseudo-terminal made by
/// `script`), forced as lines by `--progress`, silenced by `-q`; a pipe
/// gets nothing extra. `-v` names each file.
#[test]
fn progress_only_on_a_terminal() {
    use std::process::Command;
    let server = TestServer::start(&[]);
    let url = server.url();
    let work = tempfile::tempdir().unwrap();
    let f = work.path().join("big.bin");
    common::make_file(&f, 6 << 20, 3);
    let tree = work.path().join("tree");
    write(&tree.join("a"), "a");
    write(&tree.join("sub/b"), "b");

    let o = run(&server, &["put", url, p(&f), "quiet.bin"]);
    ok(&o);
    assert!(o.stderr.is_empty(), "a pipe gets nothing: {}", stderr(&o));
    let o = run(&server, &["put", "--progress", url, p(&f), "lines.bin"]);
    ok(&o);
    assert!(stderr(&o).contains("1 file, 6.00 MiB in"), "{}", stderr(&o));
    let o = run(&server, &["put", "-r", "-v", url, p(&tree), "t"]);
    ok(&o);
    assert!(
        stderr(&o).contains("t/sub/b") && stderr(&o).contains("2 files"),
        "{}",
        stderr(&o)
    );

    let o = run(
        &server,
        &[
            "put",
            "--json",
            url,
            p(&f),
            p(&work.path().join("nope")),
            "j/",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["files"], 1, "{v}");
    assert_eq!(v["bytes"], 6 << 20, "{v}");
    assert_eq!(v["failures"].as_array().map(Vec::len), Some(1), "{v}");

    let in_pty = |args: &str| {
        let cmd = format!("{} {args}", common::skiff_bin());
        let mut c = common::env_for(Command::new("script"), server.home.path());
        c.env("SKIFF_TEST_CHUNK_DELAY_MS", "150")
            .env("TERM", "xterm")
            .args(["-qec", &cmd, "/dev/null"]);
        c.output().unwrap()
    };
    let o = in_pty(&format!("put {url} {} tty.bin", p(&f)));
    ok(&o);
    let shown = text(&o.stdout);
    assert!(shown.contains("ETA"), "a bar on the terminal: {shown:?}");
    assert!(
        shown.contains("big.bin"),
        "the bar names the file: {shown:?}"
    );
    assert!(shown.contains("1 file, 6.00 MiB in"), "{shown:?}");
    let o = in_pty(&format!("put -q {url} {} q.bin", p(&f)));
    ok(&o);
    assert!(!text(&o.stdout).contains("ETA"), "{:?}", text(&o.stdout));
    assert!(server.root.join("q.bin").is_file());
}
