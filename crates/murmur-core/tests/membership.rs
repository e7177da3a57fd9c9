//! SWIM membership (foca) inside the replica, under the deterministic driver.

use std::time::Duration;

use murmur_core::testkit::Cluster;

fn with_membership(nodes: usize, seed: u64) -> Cluster {
    Cluster::with_config(nodes, seed, |mut config| {
        config.membership_addr = Some(format!("sim://{}", config.node_id.short()));
        config
    })
}

fn member_ids(cluster: &Cluster, node: usize) -> Vec<murmur_core::NodeId> {
    cluster
        .replica(node)
        .members()
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

#[test]
fn members_learn_each_other_and_their_addresses() {
    let mut cluster = with_membership(4, 31);
    cluster.run_for(Duration::from_secs(5));
    for node in 0..4 {
        let mut expected: Vec<_> = (0..4)
            .filter(|&n| n != node)
            .map(|n| cluster.node_id(n))
            .collect();
        expected.sort();
        assert_eq!(member_ids(&cluster, node), expected, "node {node}'s view");
        for (id, addr) in cluster.replica(node).members() {
            assert_eq!(addr, format!("sim://{}", id.short()));
        }
    }
}

#[test]
fn a_crashed_member_is_declared_down_and_taken_back_after_a_restart() {
    let mut cluster = with_membership(3, 32);
    cluster.run_for(Duration::from_secs(5));
    let crashed = cluster.node_id(2);
    cluster.crash(2);
    cluster.run_for(Duration::from_secs(60));
    assert!(
        !member_ids(&cluster, 0).contains(&crashed),
        "node 0 still lists the crashed node"
    );
    cluster.restart(2);
    cluster.run_for(Duration::from_secs(10));
    assert!(
        member_ids(&cluster, 0).contains(&crashed),
        "node 0 did not take the node back"
    );
    assert_eq!(member_ids(&cluster, 2).len(), 2);
}
