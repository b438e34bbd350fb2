// Waits until a local test cluster started by scripts/cql.sh answers CQL:
// every node answers a query through itself, then a write at consistency ALL
// (every replica acknowledges) succeeds with each node as the coordinator, so
// the nodes also see each other. Uses the DataStax Java driver that ships with
// cassandra-all.
//
//   java -cp <classes>:<lib>/* CqlProbe <timeout-seconds> host:port [host:port ...]
//
// Prints one line per node to stderr; exits 0 when every node passed, 1 on
// timeout (with the last error).

import com.datastax.driver.core.Cluster;
import com.datastax.driver.core.ConsistencyLevel;
import com.datastax.driver.core.Row;
import com.datastax.driver.core.Session;
import com.datastax.driver.core.SimpleStatement;
import com.datastax.driver.core.SocketOptions;
import com.datastax.driver.core.policies.RoundRobinPolicy;
import com.datastax.driver.core.policies.WhiteListPolicy;
import java.net.InetSocketAddress;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.UUID;

public final class CqlProbe {
    private static final long RETRY_PAUSE_MS = 500;

    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            System.err.println("usage: CqlProbe <timeout-seconds> host:port [host:port ...]");
            System.exit(2);
        }
        long deadline = System.nanoTime() + Long.parseLong(args[0]) * 1_000_000_000L;
        List<InetSocketAddress> nodes = new ArrayList<>();
        for (int i = 1; i < args.length; i++) {
            String[] hp = args[i].split(":");
            nodes.add(new InetSocketAddress(hp[0], Integer.parseInt(hp[1])));
        }
        for (InetSocketAddress node : nodes) {
            String version = until(deadline, node, "answer CQL", s -> {
                Row row = s.execute("SELECT release_version FROM system.local").one();
                return row.getString("release_version");
            });
            System.err.println("cql: " + hostPort(node) + " answers (Cassandra " + version + ")");
        }
        // The probe table is created once every node has gossiped with every
        // other and they agree on the schema: a table created while a node
        // was not connected yet reaches it only by a schema pull. Under load
        // (a CI build on the same two cores) such a pull can be lost for good:
        // Cassandra counts a pull as outstanding until its answer comes, and
        // when the request or the answer is dropped (a node paused 14 s,
        // longer than the message's timeout) it never asks that peer for that
        // version again; a CI run waited 20 min on one node that kept the old
        // schema. Only a newer version makes it pull again, so the second
        // wait makes one (the table's comment) after each minute without
        // agreement.
        awaitAgreement(Math.min(deadline, System.nanoTime() + 3 * PATIENCE_NS), nodes,
            "see every other node with the same schema", null);
        until(deadline, nodes.get(0), "create the probe table", s -> {
            s.execute("CREATE KEYSPACE IF NOT EXISTS hush_probe WITH replication = "
                + "{'class': 'SimpleStrategy', 'replication_factor': " + nodes.size() + "}");
            s.execute("CREATE TABLE IF NOT EXISTS hush_probe.ping (node text PRIMARY KEY, at timestamp)");
            return "";
        });
        int[] nudges = {0};
        awaitAgreement(deadline, nodes, "agree on the schema with the probe table", s -> {
            nudges[0]++;
            s.execute("ALTER TABLE hush_probe.ping WITH comment = 'scripts/cql.sh nudge " + nudges[0] + "'");
            return "";
        });
        for (InetSocketAddress node : nodes) {
            until(deadline, node, "write at consistency ALL", s -> {
                s.execute(new SimpleStatement(
                        "INSERT INTO hush_probe.ping (node, at) VALUES (?, toTimestamp(now()))",
                        hostPort(node))
                    .setConsistencyLevel(ConsistencyLevel.ALL));
                return "";
            });
            System.err.println("cql: " + hostPort(node) + " writes to all " + nodes.size() + " replicas");
        }
        for (InetSocketAddress node : new ArrayList<>(SESSIONS.keySet())) {
            forget(node);
        }
    }

    /** How long a wait for agreement goes without one before it acts. */
    private static final long PATIENCE_NS = 60_000_000_000L;

    /**
     * Waits until every node lists the others as peers on its own schema
     * version. With `nudge`, runs it through the first node after each
     * {@link #PATIENCE_NS} without agreement and fails at the deadline;
     * without, returns at the deadline (the caller goes on, a later wait nudges).
     */
    private static void awaitAgreement(long deadline, List<InetSocketAddress> nodes, String what, Check nudge)
            throws InterruptedException {
        long nextNudge = System.nanoTime() + PATIENCE_NS;
        String last = null;
        while (true) {
            last = disagreement(nodes);
            if (last == null) {
                return;
            }
            long now = System.nanoTime();
            if (now >= deadline) {
                break;
            }
            if (nudge != null && now >= nextNudge) {
                System.err.println("cql: the nodes did not " + what + " for a minute (" + last
                    + "): a newer schema version makes a node stuck on a lost pull ask again");
                try {
                    nudge.run(session(nodes.get(0)));
                } catch (Exception e) {
                    forget(nodes.get(0));
                    System.err.println("cql: the nudge failed: " + e);
                }
                nextNudge = System.nanoTime() + PATIENCE_NS;
            }
            Thread.sleep(RETRY_PAUSE_MS);
        }
        if (nudge != null) {
            System.err.println("cql: the nodes did not " + what + " in time: " + last);
            System.exit(1);
        }
        System.err.println("cql: the nodes did not " + what + " within " + PATIENCE_NS * 3 / 1_000_000_000L
            + " s (" + last + "): going on, the next wait nudges");
    }

    /** Null when every node sees the others on its schema version, else who does not. */
    private static String disagreement(List<InetSocketAddress> nodes) {
        List<String> views = new ArrayList<>();
        boolean agreed = true;
        for (InetSocketAddress node : nodes) {
            try {
                Session s = session(node);
                UUID local = s.execute("SELECT schema_version FROM system.local").one().getUUID("schema_version");
                int agreeing = 0;
                for (Row peer : s.execute("SELECT schema_version FROM system.peers_v2")) {
                    if (local != null && local.equals(peer.getUUID("schema_version"))) {
                        agreeing++;
                    }
                }
                agreed &= agreeing == nodes.size() - 1;
                views.add(hostPort(node) + " on " + local + " with " + agreeing + " of " + (nodes.size() - 1));
            } catch (Exception e) {
                forget(node);
                agreed = false;
                views.add(hostPort(node) + ": " + e);
            }
        }
        return agreed ? null : String.join("; ", views);
    }

    interface Check {
        String run(Session session) throws Exception;
    }

    /** One open session per node, reused by the checks while it works. */
    private static final Map<InetSocketAddress, Cluster> CLUSTERS = new HashMap<>();
    private static final Map<InetSocketAddress, Session> SESSIONS = new HashMap<>();

    private static Session session(InetSocketAddress node) {
        Session open = SESSIONS.get(node);
        if (open != null) {
            return open;
        }
        Cluster cluster = Cluster.builder()
            .addContactPointsWithPorts(node)
            .withLoadBalancingPolicy(new WhiteListPolicy(new RoundRobinPolicy(), List.of(node)))
            .withSocketOptions(new SocketOptions().setConnectTimeoutMillis(2000).setReadTimeoutMillis(10000))
            .withoutJMXReporting()
            .withoutMetrics()
            .build();
        try {
            Session session = cluster.connect();
            CLUSTERS.put(node, cluster);
            SESSIONS.put(node, session);
            return session;
        } catch (RuntimeException e) {
            cluster.close();
            throw e;
        }
    }

    private static void forget(InetSocketAddress node) {
        SESSIONS.remove(node);
        Cluster cluster = CLUSTERS.remove(node);
        if (cluster != null) {
            cluster.close();
        }
    }

    /** Runs `check` through `node` only, retrying until it passes or the deadline. */
    private static String until(long deadline, InetSocketAddress node, String what, Check check)
            throws InterruptedException {
        Exception last = null;
        while (System.nanoTime() < deadline) {
            try {
                return check.run(session(node));
            } catch (Exception e) {
                last = e;
                forget(node);
            }
            Thread.sleep(RETRY_PAUSE_MS);
        }
        System.err.println("cql: " + hostPort(node) + " did not " + what + " in time: " + last);
        System.exit(1);
        return null;
    }

    private static String hostPort(InetSocketAddress a) {
        return a.getHostString() + ":" + a.getPort();
    }
}
