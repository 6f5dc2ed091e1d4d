//! The whole `hostlb-lb` command line: argv is a list of arguments, each a subcommand, a flag, a
//! value or comma-separated values of the shapes the flags take, or any bytes (not only UTF-8).
//! Parsing never panics; a command it accepts is written back as arguments that parse as the
//! same command; for `init` and `run`, the forwarding either refuses the arguments as bad ones (exit
//! code 2) or is consistent, and its rules read back as nft text and encode.

#![no_main]

use std::ffi::OsString;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::ffi::OsStringExt;

use arbitrary::Arbitrary;
use clap::Parser;
use hostlb_lb::netlink::{encode_batch, Sequence};
use hostlb_lb::port_forwarding::PortForwarding;
use hostlb_lb::rule_text::step_text;
use hostlb_lb::rules::{ruleset, Step, CHAIN_DNAT};
use hostlb_contract::{
    flag, Command, Destination, RuleArgs, FAMILIES_ENV, LB_BINARY, PORTS_ENV, PROBE_ADDRESS_ENV, PROBE_PORT_ENV,
    SOURCE_RANGES_ENV, TO_ENV,
};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Arg {
    Subcommand(Subcommand),
    Flag(Flag),
    FlagWithValue(Flag, Value),
    Value(Value),
    Values(Vec<Value>),
    Bytes(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Subcommand {
    Init,
    Run,
    Hold,
    Probe,
    Help,
}

#[derive(Arbitrary, Debug)]
enum Flag {
    Port,
    To,
    Family,
    SourceRange,
    Address,
    Version,
}

#[derive(Arbitrary, Debug)]
enum Value {
    PortMap(Protocol, Port, Port),
    Port(Port),
    Address(Address),
    /// IPv6 if true; spelled in either case, as `--family` takes both.
    Family(bool),
    Range(Address, u8),
    NodeEndpoints,
    Text(String),
}

#[derive(Arbitrary, Debug)]
enum Protocol {
    Tcp,
    Udp,
    Sctp,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Port {
    Number(u16),
    Text(String),
}

#[derive(Arbitrary, Debug)]
enum Address {
    V4([u8; 4]),
    V6([u8; 16]),
    Bracketed([u8; 16]),
    Text(String),
}

impl Arg {
    fn text(self) -> OsString {
        match self {
            Arg::Subcommand(subcommand) => match subcommand {
                Subcommand::Init => "init",
                Subcommand::Run => "run",
                Subcommand::Hold => "hold",
                Subcommand::Probe => "probe",
                Subcommand::Help => "help",
            }
            .into(),
            Arg::Flag(flag) => flag.text().into(),
            Arg::FlagWithValue(flag, value) => format!("{}={}", flag.text(), value.text()).into(),
            Arg::Value(value) => value.text().into(),
            Arg::Values(values) => values.into_iter().map(Value::text).collect::<Vec<_>>().join(",").into(),
            Arg::Bytes(bytes) => OsString::from_vec(bytes),
        }
    }
}

impl Flag {
    fn text(&self) -> String {
        match self {
            Flag::Port => format!("--{}", flag::PORT),
            Flag::To => format!("--{}", flag::TO),
            Flag::Family => format!("--{}", flag::FAMILY),
            Flag::SourceRange => format!("--{}", flag::SOURCE_RANGE),
            Flag::Address => format!("--{}", flag::ADDRESS),
            Flag::Version => "--version".into(),
        }
    }
}

impl Value {
    fn text(self) -> String {
        match self {
            Value::PortMap(protocol, listen, target) => {
                let protocol = match protocol {
                    Protocol::Tcp => "tcp".into(),
                    Protocol::Udp => "udp".into(),
                    Protocol::Sctp => "sctp".into(),
                    Protocol::Other(text) => text,
                };
                format!("{protocol}:{}:{}", listen.text(), target.text())
            }
            Value::Port(port) => port.text(),
            Value::Address(address) => address.text(),
            Value::Range(address, prefix) => format!("{}/{prefix}", address.text()),
            Value::Family(v6) => if v6 { "ipv6" } else { "IPv4" }.into(),
            Value::NodeEndpoints => Destination::NodeEndpoints.to_string(),
            Value::Text(text) => text,
        }
    }
}

impl Port {
    fn text(self) -> String {
        match self {
            Port::Number(number) => number.to_string(),
            Port::Text(text) => text,
        }
    }
}

impl Address {
    fn text(self) -> String {
        match self {
            Address::V4(octets) => Ipv4Addr::from(octets).to_string(),
            Address::V6(octets) => Ipv6Addr::from(octets).to_string(),
            Address::Bracketed(octets) => format!("[{}]", Ipv6Addr::from(octets)),
            Address::Text(text) => text,
        }
    }
}

/// clap falls back to these variables: removed, so that the arguments alone decide each run.
const LB_ENV: [&str; 6] = [PORTS_ENV, TO_ENV, FAMILIES_ENV, SOURCE_RANGES_ENV, PROBE_PORT_ENV, PROBE_ADDRESS_ENV];

fuzz_target!(
    init: {
        for name in LB_ENV {
            std::env::remove_var(name);
        }
    },
    |args: Vec<Arg>| {
        let argv = std::iter::once(OsString::from(LB_BINARY)).chain(args.into_iter().map(Arg::text));
        let Ok(command) = Command::try_parse_from(argv) else {
            return;
        };
        let written = command.command_line();
        match Command::try_parse_from(&written) {
            Ok(read_back) => assert_eq!(read_back, command, "{written:?}"),
            Err(error) => panic!("{command:?} was written as {written:?}, which is refused: {error}"),
        }
        if let Command::Init(args) | Command::Run(args) = &command {
            check_forwarding(args);
        }
    }
);

fn check_forwarding(args: &RuleArgs) {
    let forwarding = match PortForwarding::new(args) {
        Ok(forwarding) => forwarding,
        Err(error) => {
            assert_eq!(error.exit_code(), 2, "{args:?}: {error}");
            return;
        }
    };
    assert!(!forwarding.ports.is_empty(), "{args:?}");
    assert!(forwarding.ports.windows(2).all(|pair| (pair[0].protocol, pair[0].listen) < (pair[1].protocol, pair[1].listen)));
    assert!(forwarding.source_ranges.windows(2).all(|pair| pair[0] < pair[1]), "{args:?}");
    assert!(!forwarding.forwards.is_empty(), "{args:?}");
    for backend in forwarding.forwards.values().flatten().flat_map(|forward| &forward.backends) {
        let address = backend.ip();
        assert!(!address.is_unspecified() && !address.is_loopback() && !address.is_multicast());
    }
    let steps = ruleset(&forwarding);
    for step in &steps {
        let text = step_text(step);
        // Raw registers, offsets or hexadecimal mean the rule text no longer reads the rules.
        assert!(!["reg ", "0x", "@nh", "@th"].iter().any(|raw| text.contains(raw)), "{text}");
    }
    let dnat_rules = steps.iter().filter(|step| matches!(step, Step::AddRule { chain: CHAIN_DNAT, .. })).count();
    let backends: usize = forwarding.forwards.values().flatten().map(|forward| forward.backends.len()).sum();
    assert_eq!(dnat_rules, backends);
    if forwarding.follows_endpoints {
        assert_eq!(dnat_rules, 0, "{args:?}");
    } else {
        assert_eq!(dnat_rules, forwarding.ports.len() * forwarding.forwards.len(), "{args:?}");
    }
    let batch = encode_batch(&steps, Sequence { first: 1 });
    let mut messages = 0;
    let mut rest = &batch[..];
    while let Some(header) = rest.get(..4) {
        let len = u32::from_ne_bytes(header.try_into().unwrap()) as usize;
        assert!(len >= 20 && len.is_multiple_of(4) && len <= rest.len(), "message {messages} of {len} bytes");
        rest = &rest[len..];
        messages += 1;
    }
    assert!(rest.is_empty());
    assert_eq!(messages, steps.len() + 2, "one message per step between begin and end");
}
