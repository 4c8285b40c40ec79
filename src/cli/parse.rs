//! Value parsers for flags: text in, plain values out (clap calls them; a bad value is a usage
//! error with the flag's name).

use std::time::Duration;

use hoist::materialize::LinkMode;
use hoist::oci::modelpack::LayerKind;
use hoist::oci::LayerFormat;
use hoist::Error;

pub fn layer_format(s: &str) -> Result<LayerFormat, String> {
    LayerFormat::parse(s).ok_or_else(|| format!("{s:?} is not one of raw, tar, tar+gzip, tar+zstd"))
}

pub fn annotation(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// Sizes like `16MiB`, `100M`, `1048576`.
pub fn size(s: &str) -> Result<u64, String> {
    let lower = s.trim().to_ascii_lowercase();
    let split = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (num, unit) = lower.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 16MiB)"))?;
    let mult: u64 = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("{s:?} has an unknown unit (use KiB, MiB or GiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

pub fn platform(s: &str) -> Result<hoist::oci::Platform, String> {
    hoist::oci::Platform::parse(s).ok_or_else(|| {
        format!("{s:?} is not a platform: write os/architecture[/variant], e.g. linux/arm64")
    })
}

pub fn link_mode(s: &str) -> Result<LinkMode, String> {
    LinkMode::parse(s).ok_or_else(|| format!("{s:?} is not one of auto, reflink, hardlink, copy"))
}

pub fn kind(s: &str) -> Result<LayerKind, String> {
    LayerKind::parse(s)
        .ok_or_else(|| format!("{s:?} is not one of weight, config, doc, code, dataset"))
}

/// `LISTEN=UPSTREAM` of the WAN emulator.
pub fn route(s: &str) -> Result<(String, std::net::SocketAddr), String> {
    let (listen, upstream) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not LISTEN=UPSTREAM"))?;
    let upstream = upstream
        .parse()
        .map_err(|e| format!("{upstream:?} is not an address: {e}"))?;
    Ok((listen.to_string(), upstream))
}

/// `50MB,20ms` → (bytes per second, latency).
pub fn link(s: &str) -> Result<(u64, Duration), String> {
    let (rate, latency) = s
        .split_once(',')
        .ok_or_else(|| format!("{s:?}: expected RATE,LATENCY like 50MB,20ms"))?;
    let rate = rate.trim().to_ascii_lowercase();
    let rate = match rate.strip_suffix("mb") {
        Some(n) => n.trim().parse::<u64>().map(|n| n * 1_000_000),
        None => rate.parse::<u64>(),
    }
    .map_err(|_| format!("rate {rate:?} is not a number of MB"))?;
    let ms = latency
        .trim()
        .trim_end_matches("ms")
        .parse::<u64>()
        .map_err(|_| format!("latency {latency:?} is not a number of ms"))?;
    Ok((rate, Duration::from_millis(ms)))
}

/// An address to listen on: `IP:PORT`, or `HOST:PORT` resolved (`localhost:5000`).
pub fn listen_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    s.to_socket_addrs()
        .map_err(|e| format!("{s:?} is not HOST:PORT ({e})"))?
        // IPv4 first: `localhost` means 127.0.0.1 to most clients.
        .min_by_key(|a| a.is_ipv6())
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

/// Ages like `7d`, `12h`, `30m`, `90s` or `3600` (seconds).
pub fn age(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not an age (e.g. 7d, 12h, 30m)"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{s:?} has an unknown unit (use s, m, h or d)")),
    };
    Ok(std::time::Duration::from_secs(n.saturating_mul(secs)))
}

/// Globs of `--include`/`--exclude`.
pub fn globs(flag: &str, patterns: &[String]) -> Result<Option<globset::GlobSet>, Error> {
    hoist::transfer::LayerFilter::globs(patterns).map_err(|e| Error::Usage(format!("{flag}: {e}")))
}

/// `UID:GID`, numeric.
pub fn owner(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{s:?} is not UID:GID (numbers, e.g. 65532:65532)");
    let (u, g) = s.split_once(':').ok_or_else(bad)?;
    Ok((u.parse().map_err(|_| bad())?, g.parse().map_err(|_| bad())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_units_and_refuse_overflow() {
        assert_eq!(size("16MiB"), Ok(16 << 20));
        assert_eq!(size("100m"), Ok(100 << 20));
        assert_eq!(size("7"), Ok(7));
        assert!(size("3 parsecs").is_err());
        assert!(size("99999999999999GiB").is_err());
    }

    #[test]
    fn ages_take_units() {
        assert_eq!(age("7d").unwrap().as_secs(), 7 * 86400);
        assert_eq!(age("90").unwrap().as_secs(), 90);
        assert!(age("1w").is_err());
    }

    #[test]
    fn listen_addresses_may_name_a_host() {
        assert_eq!(
            listen_addr("localhost:5860").unwrap(),
            "127.0.0.1:5860".parse().unwrap()
        );
        assert_eq!(
            listen_addr("0.0.0.0:5000").unwrap(),
            "0.0.0.0:5000".parse().unwrap()
        );
        assert!(listen_addr("no-port").is_err());
    }
}
