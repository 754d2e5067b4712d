//! Where a node fetches a release's module from (issue 8 follow-up): a
//! neighbour that does not keep it gives way to another that offered it.

use std::time::Duration;

use ringhost::config::NodeConfig;
use ringhost::observe::EventKind;

use crate::deploy::{addr, marker, push_to, quick, released, scratch, start_node, wait_running};
use crate::deploy_records::events_during;
use crate::support::TestRing;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_neighbour_without_the_module_is_not_asked_again_and_the_one_that_has_it_is() {
    let data = scratch("sources");
    let dir = data.clone();
    let configure = move |c: &mut NodeConfig| {
        quick(c);
        c.deploy.data_dir = Some(dir.join(c.index.to_string()));
    };
    let mut ring = TestRing::start(3, &configure).await;
    let mut hashes = Vec::new();
    for n in [1, 2] {
        let r = released(push_to(&addr(&ring, 0), "marker", &marker(n), &[]).await);
        wait_running(&ring, &[0, 1, 2], "marker", r.hash, Duration::from_secs(20)).await;
        hashes.push(r.hash);
    }
    for i in [0, 1, 2] {
        ring.nodes[i].take().unwrap().shutdown().await.unwrap();
    }
    // Nodes 0 and 1 both lost v2's module; node 2 keeps it.
    for i in ["0", "1"] {
        let module = data
            .join(i)
            .join("modules")
            .join(format!("{}.wasm", hashes[1]));
        std::fs::remove_file(&module).unwrap();
    }
    start_node(&mut ring, 0, &configure).await;
    start_node(&mut ring, 1, &configure).await;
    wait_running(&ring, &[0, 1], "marker", hashes[0], Duration::from_secs(10)).await;
    // Each may ask the other once; told "not kept here", it does not ask
    // again (before the fix: every back-off, 1 s, 2 s, 4 s ...).
    let failures: Vec<_> = events_during(&mut ring, Duration::from_secs(5))
        .await
        .into_iter()
        .filter(|e| matches!(e.kind, EventKind::DeployFailed { .. }))
        .collect();
    for i in [0, 1] {
        let n = failures.iter().filter(|e| e.node == i).count();
        assert!(n <= 1, "node {i} asked again: {failures:#?}");
    }
    // Node 2 returns with the module: both fetch it from there, without
    // waiting out a back-off.
    start_node(&mut ring, 2, &configure).await;
    wait_running(
        &ring,
        &[0, 1, 2],
        "marker",
        hashes[1],
        Duration::from_secs(5),
    )
    .await;
    ring.shutdown().await;
    let _ = std::fs::remove_dir_all(&data);
}
