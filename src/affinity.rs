//! Where and how urgently threads run: which CPUs the process may use, keeping a thread on
//! one of them, and lowering a thread's priority.
//!
//! With one worker per CPU and no pinning, the kernel sometimes puts two workers on one CPU
//! while the other CPU runs the apps: the connections of both wait behind each other, and
//! p99 doubles for as long as it lasts (bench/HISTORY.md, two workers). nginx
//! (`worker_cpu_affinity`) and HAProxy (`cpu-map`) offer the same binding.

use std::io;

/// The CPUs this thread may run on (its affinity mask, inherited from the process: a
/// container's cpuset, `taskset`), in ascending order.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data, zeroed is an empty set, and the size passed is its own.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: CPU_ISSET reads within the set for every index below CPU_SETSIZE.
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Keeps the calling thread on `cpu` from now on.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "CPU {cpu} is beyond the {} a CPU set holds",
                libc::CPU_SETSIZE
            ),
        ));
    }
    // SAFETY: as above; `cpu` was checked against the set's size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Gives the calling thread, and the threads it starts from now on, the nice value `nice`
/// (higher is less urgent; raising it needs no privilege).
pub fn lower_priority_of_this_thread(nice: i32) -> io::Result<()> {
    // On Linux, PRIO_PROCESS with 0 names the calling thread, not every thread of the process.
    // SAFETY: plain system call on the calling thread.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_thread_may_run_on_its_cpu_alone() {
        let allowed = allowed_cpus().expect("affinity");
        assert!(!allowed.is_empty());
        let last = *allowed.last().expect("a CPU");
        let seen = std::thread::spawn(move || {
            pin_current_thread(last)?;
            allowed_cpus()
        })
        .join()
        .expect("thread")
        .expect("pinned");
        assert_eq!(seen, vec![last]);
        // Only the pinned thread changed.
        assert_eq!(allowed_cpus().expect("affinity"), allowed);
    }

    #[test]
    fn a_lowered_thread_alone_runs_at_its_new_nice_value() {
        // SAFETY: getpriority on the calling thread; -1 is also a valid answer, so errno
        // is not consulted and the values are simply compared.
        let before = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        let after = std::thread::spawn(|| {
            lower_priority_of_this_thread(19)?;
            Ok::<_, io::Error>(unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) })
        })
        .join()
        .expect("thread")
        .expect("lowered");
        assert_eq!(after, 19);
        assert_eq!(unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }, before);
    }

    #[test]
    fn a_cpu_beyond_the_set_is_refused() {
        let e = pin_current_thread(libc::CPU_SETSIZE as usize).expect_err("refused");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
