// The bench's ActiveMQ client (`cargo xtask bench`, owner truth): opens N
// connections to the broker with Debian's activemq-client.jar, says
// `ready N`, then `failed N` once the library has given up every one of
// them (it closes each socket as soon as it reads EOF from a stopped
// broker). Exits when its stdin closes.
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.AtomicInteger;
import javax.jms.Connection;
import org.apache.activemq.ActiveMQConnectionFactory;

public class OwnerTruthClient {
    public static void main(String[] args) throws Exception {
        String url = args[0];
        int n = Integer.parseInt(args[1]);
        ActiveMQConnectionFactory factory = new ActiveMQConnectionFactory(url);
        AtomicInteger failed = new AtomicInteger();
        List<Connection> connections = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            Connection c = factory.createConnection();
            c.setExceptionListener(e -> {
                if (failed.incrementAndGet() == n) {
                    System.out.println("failed " + n);
                    System.out.flush();
                }
            });
            c.start();
            connections.add(c);
        }
        System.out.println("ready " + connections.size());
        System.out.flush();
        while (System.in.read() != -1) {
        }
    }
}
