//! What the benchmark reads from `/proc`: each server's CPU time (and how
//! much of it the kernel's), thread switches, bytes written to disk and
//! resident memory, the machine's busy and stolen time and its load
//! average. Counters are read before and after a run; the report
//! divides their difference by the operations the run completed.

use std::path::Path;

use anyhow::Context;

/// Counters of a set of processes, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// utime + stime, in seconds.
    pub cpu_secs: f64,
    /// Of it, stime: the kernel's work for the processes (syscalls,
    /// loopback TCP, waking and switching threads). Runs on different
    /// machines differ most here when a VM makes the kernel's paths dear.
    pub kernel_cpu_secs: f64,
    /// Voluntary and involuntary switches of every thread.
    pub switches: u64,
    /// Bytes the processes caused to be written to the block layer
    /// (`write_bytes` of `/proc/<pid>/io`): the log, the database and their
    /// fsyncs, not writes that stayed in the page cache and were dropped.
    pub write_bytes: u64,
    /// Resident memory now, in bytes.
    pub rss_bytes: u64,
    /// Of it, the anonymous pages (`RssAnon`: heap, stacks, the
    /// allocator's): what the process alone holds. The rest is mapped
    /// files, mostly the program's code, whose pages every process running
    /// the same binary shares.
    pub anon_bytes: u64,
}

impl Usage {
    /// The sum over `pids`.
    pub fn of(pids: &[u32]) -> anyhow::Result<Usage> {
        let mut total = Usage::default();
        for &pid in pids {
            let one = Usage::of_one(&format!("/proc/{pid}"))?;
            total.cpu_secs += one.cpu_secs;
            total.kernel_cpu_secs += one.kernel_cpu_secs;
            total.switches += one.switches;
            total.write_bytes += one.write_bytes;
            total.rss_bytes += one.rss_bytes;
            total.anon_bytes += one.anon_bytes;
        }
        Ok(total)
    }

    /// This process (the load generator).
    pub fn of_self() -> anyhow::Result<Usage> {
        Usage::of_one("/proc/self")
    }

    fn of_one(dir: &str) -> anyhow::Result<Usage> {
        let stat = read(&format!("{dir}/stat"))?;
        // The command name, in parentheses, may hold spaces: fields count
        // from the last ')'. utime and stime are fields 14 and 15, the
        // 12th and 13th after it.
        let after_name = &stat[stat.rfind(')').context("no ')' in stat")? + 2..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks =
            |i: usize| -> anyhow::Result<u64> { Ok(fields.get(i).context("short stat")?.parse()?) };
        let cpu_secs = (ticks(11)? + ticks(12)?) as f64 / USER_HZ;
        let kernel_cpu_secs = ticks(12)? as f64 / USER_HZ;
        let switches = thread_switches(dir)?;
        let io = read(&format!("{dir}/io"))?;
        let write_bytes = field(&io, "write_bytes:")?;
        let status = read(&format!("{dir}/status"))?;
        let rss_bytes = field(&status, "VmRSS:")? * 1024;
        let anon_bytes = field(&status, "RssAnon:")? * 1024;
        Ok(Usage {
            cpu_secs,
            kernel_cpu_secs,
            switches,
            write_bytes,
            rss_bytes,
            anon_bytes,
        })
    }

    /// What happened between `earlier` and `self`; the memory is `self`'s.
    pub fn since(&self, earlier: &Usage) -> Usage {
        Usage {
            cpu_secs: self.cpu_secs - earlier.cpu_secs,
            kernel_cpu_secs: self.kernel_cpu_secs - earlier.kernel_cpu_secs,
            // A thread that exited takes its count along.
            switches: self.switches.saturating_sub(earlier.switches),
            write_bytes: self.write_bytes.saturating_sub(earlier.write_bytes),
            rss_bytes: self.rss_bytes,
            anon_bytes: self.anon_bytes,
        }
    }
}

/// The switches of every thread of a process: a process's own `status`
/// counts only its first thread's.
fn thread_switches(dir: &str) -> anyhow::Result<u64> {
    let tasks =
        std::fs::read_dir(format!("{dir}/task")).with_context(|| format!("listing {dir}/task"))?;
    let mut total = 0;
    for task in tasks.flatten() {
        // A thread may exit between the listing and the read.
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        total += field(&status, "voluntary_ctxt_switches:")?
            + field(&status, "nonvoluntary_ctxt_switches:")?;
    }
    Ok(total)
}

/// The whole machine's CPU time from `/proc/stat`, summed over every core.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MachineCpu {
    /// Seconds not idle, stolen ones included.
    pub busy: f64,
    pub total: f64,
    /// Seconds the hypervisor gave a core of this VM to something else.
    pub steal: f64,
}

impl MachineCpu {
    pub fn since(&self, earlier: &MachineCpu) -> MachineCpu {
        MachineCpu {
            busy: self.busy - earlier.busy,
            total: self.total - earlier.total,
            steal: self.steal - earlier.steal,
        }
    }

    /// `part` as a share of the total time.
    pub fn share(&self, part: f64) -> f64 {
        share(part, self.total)
    }
}

/// `part / whole`, and 0 when nothing was counted at all.
pub fn share(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        part / whole
    } else {
        0.0
    }
}

pub fn machine_cpu() -> anyhow::Result<MachineCpu> {
    let stat = read("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    // user nice system idle iowait irq softirq steal (guest is in user).
    let total: u64 = ticks.iter().take(8).sum();
    let at = |i: usize| ticks.get(i).copied().unwrap_or(0);
    let idle = at(3) + at(4);
    Ok(MachineCpu {
        busy: (total - idle) as f64 / USER_HZ,
        total: total as f64 / USER_HZ,
        steal: at(7) as f64 / USER_HZ,
    })
}

/// The 1-, 5- and 15-minute load averages.
pub fn load_average() -> anyhow::Result<[f64; 3]> {
    let text = read("/proc/loadavg")?;
    let mut numbers = text.split_whitespace().map(str::parse::<f64>);
    let mut next = || -> anyhow::Result<f64> { Ok(numbers.next().context("short loadavg")??) };
    Ok([next()?, next()?, next()?])
}

/// Bytes a directory takes on disk (allocated blocks, as `du` counts).
pub fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => disk_usage(&entry.path()),
            Ok(meta) => meta.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// The machine's description for the report: CPU model and core count.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = read("/proc/meminfo")
        .ok()
        .and_then(|m| field(&m, "MemTotal:").ok())
        .map_or(0, |kib| kib / 1024 / 1024);
    format!("{cores} cores ({model}), {memory} GiB of memory")
}

/// Clock ticks per second in `/proc` (USER_HZ): 100 on every Linux
/// architecture this runs on.
const USER_HZ: f64 = 100.0;

fn read(path: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {path}"))
}

/// The number after `name` in a `name: value [kB]` file.
fn field(text: &str, name: &str) -> anyhow::Result<u64> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .with_context(|| format!("no {name}"))?;
    let number = line.split_whitespace().next().context("no value")?;
    Ok(number.parse()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let usage = Usage::of_self().unwrap();
        assert!(usage.rss_bytes > 0);
        assert!(usage.anon_bytes > 0 && usage.anon_bytes < usage.rss_bytes);
        assert!(usage.kernel_cpu_secs >= 0.0 && usage.kernel_cpu_secs <= usage.cpu_secs);
        let machine = machine_cpu().unwrap();
        assert!(machine.busy > 0.0 && machine.total >= machine.busy);
        assert!(machine.steal >= 0.0 && machine.steal <= machine.busy);
        assert!(load_average().unwrap()[0] >= 0.0);
    }

    /// Every thread's switches count: a thread that only sleeps adds its own.
    #[test]
    fn counts_the_switches_of_every_thread() {
        let before = Usage::of_self().unwrap().switches;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let sleeper = std::thread::spawn(move || {
            for _ in 0..20 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let _ = stopped.recv();
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        let during = Usage::of_self().unwrap().switches;
        drop(stop);
        sleeper.join().unwrap();
        assert!(during >= before + 20, "{before} → {during}");
    }

    #[test]
    fn fields_after_their_name() {
        let status = "Name:\tx\nVmRSS:\t  1234 kB\n";
        assert_eq!(field(status, "VmRSS:").unwrap(), 1234);
        assert!(field(status, "VmHWM:").is_err());
    }
}
