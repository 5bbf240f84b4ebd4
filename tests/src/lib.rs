//! Test support: spawn the server binary, Redis helpers, the fault proxy.
