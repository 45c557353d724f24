//! The kernel's clock discipline, as node_exporter's timex collector reports it: whether an NTP
//! (or PTP) daemon keeps the clock synchronised, its offset and error bounds, and the PPS
//! state. The node-mixin's `NodeClockNotSynchronising` and `NodeClockSkewDetected` alerts read
//! these, and a Jetson that boots without a real-time clock lives or dies by them.
//!
//! `adjtimex(2)` is the one system call that tells; neither rustix nor nix wraps it, so this
//! module holds the workspace's one `unsafe` block (ARCHITECTURE.md): a read-only call
//! (`modes` = 0, no privilege needed) on a zeroed struct that the kernel fills.

use super::Samples;

/// `adjtimex`' answer when the clock is not synchronised.
const TIME_ERROR: i32 = 5;
/// Status bit: `offset` and `jitter` are in nanoseconds rather than microseconds.
const STA_NANO: i64 = 0x2000;
/// Frequencies are in parts per million with a 16-bit binary fraction (adjtimex(2), NOTES).
const PPM_16_FRACTION: f64 = 1_000_000.0 * 65_536.0;

/// The fields of `struct timex` that are reported, widened to `i64`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClockState {
    /// What the call returned: the clock state, `TIME_ERROR` when unsynchronised.
    pub state: i32,
    pub offset: i64,
    pub freq: i64,
    pub maxerror: i64,
    pub esterror: i64,
    pub status: i64,
    pub constant: i64,
    pub tick: i64,
    pub ppsfreq: i64,
    pub jitter: i64,
    pub shift: i64,
    pub stabil: i64,
    pub jitcnt: i64,
    pub calcnt: i64,
    pub errcnt: i64,
    pub stbcnt: i64,
    pub tai: i64,
}

/// Asks the kernel, changing nothing.
#[allow(unsafe_code)]
// `c_long` is `i64` on the 64-bit targets built here, 32 bits elsewhere.
#[allow(clippy::useless_conversion)]
pub fn read() -> std::io::Result<ClockState> {
    // SAFETY: `libc::timex` is plain integers (and a `timeval`), for which all zeroes is a
    // valid value; zero `modes` makes the call read-only; the pointer is to a live, exclusive
    // local that the kernel only writes within its size.
    let (state, t) = unsafe {
        let mut t: libc::timex = std::mem::zeroed();
        (libc::adjtimex(&mut t), t)
    };
    if state < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ClockState {
        state,
        offset: t.offset.into(),
        freq: t.freq.into(),
        maxerror: t.maxerror.into(),
        esterror: t.esterror.into(),
        status: t.status.into(),
        constant: t.constant.into(),
        tick: t.tick.into(),
        ppsfreq: t.ppsfreq.into(),
        jitter: t.jitter.into(),
        shift: t.shift.into(),
        stabil: t.stabil.into(),
        jitcnt: t.jitcnt.into(),
        calcnt: t.calcnt.into(),
        errcnt: t.errcnt.into(),
        stbcnt: t.stbcnt.into(),
        tai: t.tai.into(),
    })
}

/// The state as node_exporter's `node_timex_*` figures, in its units.
pub fn samples(clock: &ClockState, out: &mut Samples) {
    const MICRO: f64 = 1e6;
    let fine = if clock.status & STA_NANO != 0 {
        1e9
    } else {
        MICRO
    };
    let synchronised = if clock.state == TIME_ERROR { 0.0 } else { 1.0 };
    let figures = [
        ("node_timex_sync_status", synchronised),
        ("node_timex_offset_seconds", clock.offset as f64 / fine),
        (
            "node_timex_frequency_adjustment_ratio",
            1.0 + clock.freq as f64 / PPM_16_FRACTION,
        ),
        ("node_timex_maxerror_seconds", clock.maxerror as f64 / MICRO),
        (
            "node_timex_estimated_error_seconds",
            clock.esterror as f64 / MICRO,
        ),
        ("node_timex_status", clock.status as f64),
        ("node_timex_loop_time_constant", clock.constant as f64),
        ("node_timex_tick_seconds", clock.tick as f64 / MICRO),
        (
            "node_timex_pps_frequency_hertz",
            clock.ppsfreq as f64 / PPM_16_FRACTION,
        ),
        ("node_timex_pps_jitter_seconds", clock.jitter as f64 / fine),
        // node_exporter reports the PPS interval's power of two as it is, under this name.
        ("node_timex_pps_shift_seconds", clock.shift as f64),
        (
            "node_timex_pps_stability_hertz",
            clock.stabil as f64 / PPM_16_FRACTION,
        ),
        ("node_timex_pps_jitter_total", clock.jitcnt as f64),
        ("node_timex_pps_calibration_total", clock.calcnt as f64),
        ("node_timex_pps_error_total", clock.errcnt as f64),
        (
            "node_timex_pps_stability_exceeded_total",
            clock.stbcnt as f64,
        ),
        ("node_timex_tai_offset_seconds", clock.tai as f64),
    ];
    for (name, value) in figures {
        out.add(name, &[], value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(clock: &ClockState) -> std::collections::BTreeMap<String, f64> {
        let mut out = Samples::new();
        samples(clock, &mut out);
        out.values
            .iter()
            .map(|(key, value)| (key.name().to_string(), *value))
            .collect()
    }

    #[test]
    fn units_follow_the_status_bits_and_the_16_bit_fractions() {
        let micro = ClockState {
            state: 1,
            offset: -2_500,
            freq: 65_536 * 12,
            maxerror: 16_000_000,
            esterror: 250,
            status: 0x0001,
            tick: 10_000,
            jitter: 40,
            ppsfreq: 65_536 / 2,
            stabil: 65_536 * 3,
            shift: 4,
            tai: 37,
            ..ClockState::default()
        };
        let f = figures(&micro);
        assert_eq!(f["node_timex_sync_status"], 1.0);
        assert_eq!(f["node_timex_offset_seconds"], -0.0025);
        assert!((f["node_timex_frequency_adjustment_ratio"] - 1.000_012).abs() < 1e-12);
        assert_eq!(f["node_timex_maxerror_seconds"], 16.0);
        assert_eq!(f["node_timex_estimated_error_seconds"], 0.000_25);
        assert_eq!(f["node_timex_tick_seconds"], 0.01);
        assert_eq!(f["node_timex_pps_jitter_seconds"], 0.000_04);
        assert!((f["node_timex_pps_frequency_hertz"] - 0.5e-6).abs() < 1e-18);
        assert!((f["node_timex_pps_stability_hertz"] - 3e-6).abs() < 1e-18);
        assert_eq!(f["node_timex_pps_shift_seconds"], 4.0);
        assert_eq!(f["node_timex_tai_offset_seconds"], 37.0);
        assert_eq!(f.len(), 17);

        // Nanosecond resolution changes the offset and the jitter only; TIME_ERROR is unsynced.
        let nano = ClockState {
            state: TIME_ERROR,
            status: STA_NANO,
            ..micro
        };
        let f = figures(&nano);
        assert_eq!(f["node_timex_sync_status"], 0.0);
        assert_eq!(f["node_timex_offset_seconds"], -0.000_002_5);
        assert_eq!(f["node_timex_pps_jitter_seconds"], 0.000_000_04);
        assert_eq!(f["node_timex_estimated_error_seconds"], 0.000_25);
        assert_eq!(f["node_timex_status"], STA_NANO as f64);
    }

    #[test]
    fn the_kernel_answers_without_privilege() {
        let clock = read().expect("adjtimex");
        // Every Linux kernel ticks at least 100 times a second and at most 10,000.
        assert!((100..=10_000).contains(&clock.tick), "{clock:?}");
    }
}
