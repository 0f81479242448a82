//! CPU time and peak RSS of a process, read from `/proc`.

use anyhow::Context;

/// User plus system CPU seconds `pid` has used so far (its own threads; the
/// systems under test start no children).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read `/proc/{pid}/stat`; has the process exited?"))?;
    let total = cpu_ticks(&stat).with_context(|| format!("in `/proc/{pid}/stat`"))?;
    Ok(total as f64 / clock_ticks_per_second()? as f64)
}

/// `sysconf(_SC_CLK_TCK)`, asked of `getconf` once (100 on every Linux
/// this runs on, but not assumed).
fn clock_ticks_per_second() -> anyhow::Result<u64> {
    static TICKS: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    let ticks = TICKS.get_or_init(|| {
        let output = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()?;
        String::from_utf8(output.stdout).ok()?.trim().parse().ok()
    });
    ticks.context("`getconf CLK_TCK` gave no number\nhint: is libc-bin installed?")
}

/// utime + stime, in clock ticks, from the text of `/proc/PID/stat`.
fn cpu_ticks(stat: &str) -> anyhow::Result<u64> {
    // The command name is in parentheses and may hold spaces: the fields
    // counted from 1 start after its closing parenthesis, at field 3.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("no command name in {stat:?}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |field: usize| -> anyhow::Result<u64> {
        fields
            .get(field - 3)
            .and_then(|text| text.parse().ok())
            .with_context(|| format!("no number in field {field}"))
    };
    // utime is field 14, stime field 15.
    Ok(ticks(14)? + ticks(15)?)
}

/// The most resident memory `pid` has had (`VmHWM`), in bytes.
pub fn peak_rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read `/proc/{pid}/status`; has the process exited?"))?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .with_context(|| format!("no `VmHWM` in `/proc/{pid}/status`"))?;
    Ok(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_system_ticks_past_a_name_with_spaces() {
        // A real line of Prometheus' stat, its name changed to hold a
        // space and a parenthesis.
        let stat = "4242 (prom (x) y) S 1 4242 4242 0 -1 4194560 52954 0 3 0 1234 567 0 0 20 0 12 0 \
                    8815 2011000832 45000 18446744073709551615 1 1 0 0 0 0 0 0 2143420159 0 0 0 17 1 0 0";
        assert_eq!(cpu_ticks(stat).unwrap(), 1234 + 567);
        assert!(cpu_ticks("4242 (short) S 1 2").is_err());
    }

    #[test]
    fn this_process_is_readable_and_a_missing_one_is_named() {
        let pid = std::process::id();
        assert!(peak_rss_bytes(pid).unwrap() > 1024 * 1024);
        cpu_seconds(pid).unwrap();
        let error = cpu_seconds(u32::MAX).unwrap_err().to_string();
        assert!(error.contains(&u32::MAX.to_string()), "{error}");
    }
}
