/* The fastest a FUSE file system with a metadata server can be on this machine.
 *
 * A libfuse low-level file system in C, single-threaded (fuse_session_loop), whose mkdir
 * and rmdir make one round trip over loopback TCP to an echo "master" (a child process,
 * also C) before answering, as every change of a file system that acknowledges only what
 * its master has must. Everything else is answered from memory. No journal, no checks, no
 * Python: what is left is the kernel's FUSE requests, the TCP round trip and the wake-ups.
 *
 *     fuse_floor MOUNTPOINT PORT      (runs in the foreground; unmount to stop)
 *
 * bench/fuse_floor.py builds it, runs metabench-style mkdir and rmdir loops on it and on
 * an ElkFS mount in the same minutes, and prints both.
 */
#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_DIRS 65536
#define MSG 64

static char *names[MAX_DIRS]; /* inode i + 2 is names[i]; NULL once removed */
static int n_names;
static int master = -1;

static int round_trip(void)
{
    char buf[MSG] = "change";
    if (write(master, buf, MSG) != MSG)
        return -1;
    size_t got = 0;
    while (got < MSG) {
        ssize_t r = read(master, buf + got, MSG - got);
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    return 0;
}

static void fill(struct fuse_entry_param *e, fuse_ino_t ino)
{
    memset(e, 0, sizeof(*e));
    e->ino = ino;
    e->attr.st_ino = ino;
    e->attr.st_mode = S_IFDIR | 0755;
    e->attr.st_nlink = 2;
    e->attr_timeout = 1.0;
    e->entry_timeout = 1.0;
}

static int find(const char *name)
{
    for (int i = n_names - 1; i >= 0; i--)
        if (names[i] && strcmp(names[i], name) == 0)
            return i;
    return -1;
}

static void ll_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    int i = parent == FUSE_ROOT_ID ? find(name) : -1;
    if (i < 0) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    struct fuse_entry_param e;
    fill(&e, (fuse_ino_t)i + 2);
    fuse_reply_entry(req, &e);
}

static void ll_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)fi;
    struct fuse_entry_param e;
    fill(&e, ino);
    fuse_reply_attr(req, &e.attr, 1.0);
}

static void ll_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
    (void)mode;
    if (parent != FUSE_ROOT_ID || n_names == MAX_DIRS || find(name) >= 0) {
        fuse_reply_err(req, parent != FUSE_ROOT_ID ? EPERM : n_names == MAX_DIRS ? ENOSPC : EEXIST);
        return;
    }
    if (round_trip() < 0) {
        fuse_reply_err(req, EIO);
        return;
    }
    names[n_names] = strdup(name);
    struct fuse_entry_param e;
    fill(&e, (fuse_ino_t)n_names + 2);
    n_names++;
    fuse_reply_entry(req, &e);
}

static void ll_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    int i = parent == FUSE_ROOT_ID ? find(name) : -1;
    if (i < 0) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    if (round_trip() < 0) {
        fuse_reply_err(req, EIO);
        return;
    }
    free(names[i]);
    names[i] = NULL;
    fuse_reply_err(req, 0);
}

static const struct fuse_lowlevel_ops ops = {
    .lookup = ll_lookup,
    .getattr = ll_getattr,
    .mkdir = ll_mkdir,
    .rmdir = ll_rmdir,
};

static void echo_master(int listener)
{
    int c = accept(listener, NULL, NULL);
    int one = 1;
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    char buf[MSG];
    for (;;) {
        size_t got = 0;
        while (got < MSG) {
            ssize_t r = read(c, buf + got, MSG - got);
            if (r <= 0)
                _exit(0);
            got += (size_t)r;
        }
        if (write(c, buf, MSG) != MSG)
            _exit(0);
    }
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s MOUNTPOINT PORT\n", argv[0]);
        return 2;
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2])),
                               .sin_addr.s_addr = htonl(0x7f000001)};
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(listener, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(listener, 1) < 0) {
        perror("echo master");
        return 1;
    }
    pid_t child = fork();
    if (child == 0)
        echo_master(listener);
    close(listener);
    master = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(master, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        perror("connect");
        return 1;
    }
    setsockopt(master, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

    char *fargv[] = {argv[0], "-o", "fsname=fuse_floor", NULL};
    struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
    struct fuse_session *se = fuse_session_new(&args, &ops, sizeof(ops), NULL);
    int rc = 1;
    if (se && fuse_set_signal_handlers(se) == 0 && fuse_session_mount(se, argv[1]) == 0) {
        printf("mounted\n");
        fflush(stdout);
        rc = fuse_session_loop(se) ? 1 : 0;
        fuse_session_unmount(se);
    }
    if (se) {
        fuse_remove_signal_handlers(se);
        fuse_session_destroy(se);
    }
    close(master);
    kill(child, SIGTERM);
    waitpid(child, NULL, 0);
    return rc;
}
