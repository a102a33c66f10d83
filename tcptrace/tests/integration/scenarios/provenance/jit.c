/* A client that leaks through JIT-compiled code, as a JVM, Node or
 * Python 3.12 with -X perf does: the code that calls connect() runs from
 * anonymous executable memory, named only by the perf map the runtime
 * writes (/tmp/perf-PID.map). It connects N times to 127.0.0.1:PORT and
 * never closes (the server does: CLOSE_WAIT).
 * Usage: jit PORT N
 * Prints "ready PID" once connected, then waits. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

/* What the JIT emits: a frame, then a call into the runtime's native code.
 *   push %rbp; mov %rsp,%rbp; mov %rdi,%rax; mov %esi,%edi; call *%rax;
 *   pop %rbp; ret */
static const unsigned char JITTED[] = {0x55, 0x48, 0x89, 0xe5, 0x48, 0x89, 0xf8, 0x89,
                                       0xf7, 0xff, 0xd0, 0x5d, 0xc3};
/* The name the runtime gives it in its perf map. */
#define JIT_NAME "LazyCompile:*openBrokerConnection broker.js:12"

/* The runtime's native connect, which the JIT calls. */
__attribute__((noinline)) static int native_connect(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        perror("connect");
        exit(1);
    }
    return fd;
}

int main(int argc, char **argv) {
    int port = atoi(argv[1]), n = atoi(argv[2]);
    unsigned char *code = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (code == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    memcpy(code, JITTED, sizeof JITTED);
    if (mprotect(code, 4096, PROT_READ | PROT_EXEC) != 0) {
        perror("mprotect");
        return 1;
    }
    char path[64];
    snprintf(path, sizeof path, "/tmp/perf-%d.map", getpid());
    FILE *map = fopen(path, "w");
    if (!map) {
        perror(path);
        return 1;
    }
    fprintf(map, "%lx %zx %s\n", (unsigned long)code, sizeof JITTED, JIT_NAME);
    fclose(map);
    int (*jitted)(int (*)(int), int) = (int (*)(int (*)(int), int))code;
    for (int i = 0; i < n; i++)
        jitted(native_connect, port);
    printf("ready %d\n", getpid());
    fflush(stdout);
    pause();
    unlink(path);
    return 0;
}
