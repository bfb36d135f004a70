//! Tether's operator: makes the cluster match the manifests in the Git repositories that
//! `GitRepository` resources name.
fn main() {
    println!("tether-operator {}", env!("CARGO_PKG_VERSION"));
}
