//! The command line as kubectl users type it: flags before or after the command, the version,
//! usage in the words typed.

use clap::error::ErrorKind;

use super::*;

/// `args` as kubectl passes them, after the plugin's path.
fn parse(args: &[&str]) -> Result<Args, clap::Error> {
    Args::try_parse_from(["/usr/local/bin/kubectl-hostlb"].iter().chain(args)).and_then(Args::checked)
}

fn parsed(args: &[&str]) -> Args {
    parse(args).unwrap_or_else(|error| panic!("{args:?}: {error}"))
}

/// Where parsing stops: at an error, or at help or the version to print.
fn parse_error(args: &[&str]) -> clap::Error {
    match parse(args) {
        Ok(parsed) => panic!("{args:?} parsed as {parsed:?}"),
        Err(error) => error,
    }
}

#[test]
fn the_command_line_is_consistent() {
    Args::command().debug_assert();
}

#[test]
fn every_flag_is_taken_before_and_after_the_command() {
    let defaults = parsed(&["status"]);
    let flags: &[&[&str]] = &[
        &["--kubeconfig", "/tmp/config"],
        &["--context", "staging"],
        &["-n", "shop"],
        &["--namespace", "shop"],
        &["--namespace=shop"],
        &["-A"],
        &["--all-namespaces"],
        &["-l", "app=web"],
        &["--selector", "app=web"],
        &["--hostlb-namespace", "lb"],
        &["-o", "json"],
        &["-ojson"],
        &["--output", "json"],
    ];
    for flag in flags {
        let before = parsed(&[flag, &["status"][..]].concat());
        let after = parsed(&[&["status"][..], flag].concat());
        assert_eq!(before, after, "{flag:?}");
        assert_ne!(before, defaults, "{flag:?} changed nothing");
    }
}

#[test]
fn a_name_and_flags_mix_in_any_order() {
    let args = parsed(&["-n", "shop", "status", "web", "-o", "wide", "--context", "staging"]);
    assert_eq!(args.command, Command::Status { name: Some("web".into()) });
    assert_eq!(args.namespace.as_deref(), Some("shop"));
    assert_eq!(args.context.as_deref(), Some("staging"));
    assert_eq!(args.output, Output::Wide);
}

#[test]
fn conflicting_flags_are_refused_on_either_side_of_the_command_in_kubectls_words() {
    let across_namespaces = "a resource cannot be retrieved by name across all namespaces";
    let with_selector = "name cannot be provided when a selector is specified";
    let namespace_and_all = "--namespace cannot be used with --all-namespaces";
    let cases: &[(&[&str], &str)] = &[
        (&["-A", "status", "web"], across_namespaces),
        (&["status", "web", "-A"], across_namespaces),
        (&["-l", "app=web", "status", "web"], with_selector),
        (&["status", "web", "--selector", "app=web"], with_selector),
        (&["-n", "shop", "status", "-A"], namespace_and_all),
        (&["-A", "status", "--namespace", "shop"], namespace_and_all),
        (&["status", "-n", "shop", "-A"], namespace_and_all),
    ];
    for (args, message) in cases {
        let error = parse_error(args);
        assert_eq!(error.kind(), ErrorKind::ArgumentConflict, "{args:?}");
        assert!(error.to_string().starts_with(&format!("error: {message}\n")), "{args:?}: {error}");
    }
}

#[test]
fn version_and_dash_dash_version_print_the_plugins_version() {
    let version = Args::command().get_version().expect("the plugin has a version").to_string();
    let expected = format!("kubectl hostlb {version}\n");
    let flag = parse_error(&["--version"]);
    assert_eq!((flag.kind(), flag.to_string()), (ErrorKind::DisplayVersion, expected.clone()));
    assert_eq!(parsed(&["version"]).command, Command::Version);
    assert_eq!(Args::command().render_version(), expected);
}

#[test]
fn usage_and_help_name_the_plugin_as_typed() {
    let unknown = parse_error(&["--bogus", "status"]).to_string();
    assert!(unknown.contains("Usage: kubectl hostlb [OPTIONS] <COMMAND>"), "{unknown}");
    let help = parse_error(&["status", "--help"]).to_string();
    assert!(help.contains("Usage: kubectl hostlb status [OPTIONS] [NAME]"), "{help}");
    let top_help = parse_error(&["--help"]).to_string();
    assert!(!(unknown + &help + &top_help).contains("kubectl-hostlb"));
}
