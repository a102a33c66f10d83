/* A client that leaks: it connects N times to 127.0.0.1:PORT from
 * open_broker_connection() and never closes (the server does: CLOSE_WAIT).
 * Usage: leaky PORT N [fork]
 *   fork: the connections are passed to a forked child, and the parent
 *         exits: the child holds the leak.
 *        leaky serve N
 *   a server that leaks: it listens on 127.0.0.1 (any port, printed as
 *   "port P") and accepts N connections in accept_clients(), never closing.
 * Prints "ready PID" once connected (the holder's pid), then waits. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

__attribute__((noinline)) static int open_broker_connection(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        perror("connect");
        exit(1);
    }
    return fd;
}

__attribute__((noinline)) static void reconnect_loop(int port, int n) {
    for (int i = 0; i < n; i++)
        open_broker_connection(port);
}

__attribute__((noinline)) static void accept_clients(int listener, int n) {
    for (int i = 0; i < n; i++)
        if (accept(listener, NULL, NULL) < 0) {
            perror("accept");
            exit(1);
        }
}

static void serve(int n) {
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (bind(l, (struct sockaddr *)&a, sizeof a) != 0 || listen(l, n) != 0 ||
        getsockname(l, (struct sockaddr *)&a, &len) != 0) {
        perror("listen");
        exit(1);
    }
    printf("port %d\n", ntohs(a.sin_port));
    fflush(stdout);
    accept_clients(l, n);
    printf("ready %d\n", getpid());
    fflush(stdout);
    pause();
}

int main(int argc, char **argv) {
    if (strcmp(argv[1], "serve") == 0) {
        serve(atoi(argv[2]));
        return 0;
    }
    reconnect_loop(atoi(argv[1]), atoi(argv[2]));
    if (argc > 3 && strcmp(argv[3], "fork") == 0) {
        pid_t child = fork();
        if (child != 0) {
            printf("ready %d\n", child);
            fflush(stdout);
            return 0;
        }
    } else {
        printf("ready %d\n", getpid());
        fflush(stdout);
    }
    pause();
    return 0;
}
