//! What is wrong with the server right now, for `/up` and for the process's exit status.
//!
//! A component reports a problem when it starts and clears it when it ends; `/up` answers 503
//! with every current problem. A *fatal* problem (the committer stopped) also makes the server
//! shut down and `run` return an error, so a supervisor (systemd `Restart=`) restarts it rather
//! than leaving a process that accepts publishes it can never answer.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Problems by component. A std Mutex: held for one map operation, never across an await.
#[derive(Default)]
pub struct Health {
    problems: Mutex<BTreeMap<&'static str, String>>,
    fatal: Mutex<Option<String>>,
}

impl Health {
    /// Reports that `component` is failing (logged when the problem first appears).
    pub fn report(&self, component: &'static str, problem: impl Into<String>) {
        let problem = problem.into();
        let mut problems = self.problems.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if problems.get(component) != Some(&problem) {
            tracing::error!(component, problem, "unhealthy");
            problems.insert(component, problem);
        }
    }

    /// Clears `component`'s problem (logged if there was one).
    pub fn clear(&self, component: &'static str) {
        let mut problems = self.problems.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if problems.remove(component).is_some() {
            tracing::info!(component, "healthy again");
        }
    }

    /// Reports a problem the server cannot recover from in-process; `run` returns it as an error.
    pub fn report_fatal(&self, component: &'static str, problem: impl Into<String>) {
        let problem = problem.into();
        self.report(component, problem.clone());
        self.fatal.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get_or_insert(problem);
    }

    /// Every current problem, by component; empty when healthy.
    pub fn problems(&self) -> BTreeMap<&'static str, String> {
        self.problems.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The first fatal problem, if any.
    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}
