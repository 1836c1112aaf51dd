//! Parsing Sentinel and Cluster URLs, and the keys of a Redis Cluster.

use super::*;

#[test]
fn sentinel_urls_name_sentinels_a_master_and_a_database() {
    let url = SentinelUrl::parse("redis+sentinel://:p%40ss@s1:26379,s2:26380/mymaster/2").unwrap();
    assert_eq!(
        url,
        SentinelUrl {
            url: NodesUrl {
                tls: false,
                username: None,
                password: Some("p@ss".into()),
                nodes: vec![("s1".into(), 26379), ("s2".into(), 26380)],
                path: vec!["mymaster".into(), "2".into()],
            },
            master: "mymaster".into(),
            db: 2,
        }
    );
    let url = SentinelUrl::parse("rediss+sentinel://user:pw@[::1]:26379/m").unwrap();
    assert!(url.url.tls);
    assert_eq!(url.url.username.as_deref(), Some("user"));
    assert_eq!(url.url.nodes, [("::1".to_owned(), 26379)]);
    assert_eq!(url.db, 0);
}

#[test]
fn a_bad_sentinel_url_says_what_is_wrong() {
    for (url, says) in [
        ("redis+sentinel://s1:26379", "no master name"),
        ("redis+sentinel://s1:26379/", "no master name"),
        ("redis+sentinel://s1/m", "has no port"),
        ("redis+sentinel://s1:x/m", "bad port"),
        ("redis+sentinel://s1:26379/m/zero", "is not a number"),
        ("redis+sentinel://s1:26379/m/0/x", "after the database"),
        ("redis+sentinel://:26379/m", "has no host"),
    ] {
        let why = SentinelUrl::parse(url).unwrap_err();
        assert!(why.contains(says), "{url}: {why}");
    }
}

#[test]
fn cluster_urls_name_nodes_and_give_node_urls_with_the_credentials() {
    let second = Duration::from_secs(1);
    let cluster = Cluster::parse(
        "rediss+cluster://u:p%40ss@n1:7000,[::1]:7001/",
        "{t}:stream",
        second,
    )
    .unwrap();
    assert_eq!(
        cluster.url.nodes,
        [("n1".to_owned(), 7000), ("::1".to_owned(), 7001)]
    );
    assert_eq!(
        cluster.url.node_url("::1", 7001, 0),
        "rediss://u:p%40ss@[::1]:7001/0"
    );
    let plain = Cluster::parse("redis+cluster://n1:7000", "k", second).unwrap();
    assert_eq!(plain.url.node_url("n1", 7000, 0), "redis://n1:7000/0");
    for (url, says) in [
        ("redis+cluster://n1:7000/1", "only database 0"),
        ("redis+cluster://n1/", "has no port"),
        ("redis+cluster://n1:x/", "bad port"),
    ] {
        let why = Cluster::parse(url, "k", second).unwrap_err();
        assert!(why.contains(says), "{url}: {why}");
    }
}

#[test]
fn keys_on_a_redis_cluster_share_one_hash_tag() {
    assert_eq!(key_prefix("redis://h:1/0", "t").unwrap(), "t");
    assert_eq!(key_prefix("redis+cluster://h:1/", "t").unwrap(), "{t}");
    assert!(key_prefix("rediss+cluster://h:1/", "a{b").is_err());
}
