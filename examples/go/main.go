// A sticky worker in Go (standard library only, Go 1.19 as Debian 12 ships it): net/http on the
// listening sockets sticky hands it from fd 3 (systemd's LISTEN_FDS protocol), READY=1 on
// NOTIFY_SOCKET once it serves them, and on SIGTERM STOPPING=1 and a graceful Shutdown: no new
// connections, open requests finished within gracePeriod (below sticky's --grace-period, 10 s).
// When sticky passes connections on itself (--trusted-proxy, --dispatch userspace), the
// inherited fd named sticky-handoff in LISTEN_FDNAMES carries them (one per message, as
// SCM_RIGHTS); handoffListener serves it as one more net.Listener.
//
//	go build -o sticky-example-go . && sticky run --workers 4 --user nobody --ready notify -- ./sticky-example-go
package main

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The first inherited socket (systemd's SD_LISTEN_FDS_START).
const listenFdsStart = 3

// The handoff socket's name in LISTEN_FDNAMES.
const handoffName = "sticky-handoff"

// How long open requests may take once SIGTERM came: under sticky's default --grace-period.
const gracePeriod = 9 * time.Second

// listeners returns the inherited listening sockets, after checking they are this process's.
func listeners() ([]net.Listener, error) {
	if os.Getenv("LISTEN_PID") != strconv.Itoa(os.Getpid()) {
		return nil, fmt.Errorf("LISTEN_PID does not name this process; start it with `sticky run -- ...`")
	}
	count, err := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	if err != nil || count < 1 {
		return nil, fmt.Errorf("no listening socket inherited (LISTEN_FDS=%q)", os.Getenv("LISTEN_FDS"))
	}
	names := strings.Split(os.Getenv("LISTEN_FDNAMES"), ":")
	var sockets []net.Listener
	for fd := listenFdsStart; fd < listenFdsStart+count; fd++ {
		file := os.NewFile(uintptr(fd), "sticky")
		if index := fd - listenFdsStart; index < len(names) && names[index] == handoffName {
			conn, err := net.FileConn(file)
			file.Close()
			if err != nil {
				return nil, fmt.Errorf("fd %d: %w", fd, err)
			}
			sockets = append(sockets, &handoffListener{conn: conn.(*net.UnixConn)})
			continue
		}
		ln, err := net.FileListener(file) // a copy of the fd: the original may close
		file.Close()
		if err != nil {
			return nil, fmt.Errorf("fd %d: %w", fd, err)
		}
		sockets = append(sockets, ln)
	}
	return sockets, nil
}

// handoffListener accepts the connections sticky passes over its handoff socket.
type handoffListener struct {
	conn *net.UnixConn
}

// Accept takes the next connection: a one-byte message (the listen address's index) with the
// connection's fd as SCM_RIGHTS.
func (l *handoffListener) Accept() (net.Conn, error) {
	for {
		payload, oob := make([]byte, 1), make([]byte, syscall.CmsgSpace(4))
		n, oobn, _, _, err := l.conn.ReadMsgUnix(payload, oob)
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return nil, net.ErrClosed // sticky closed the socket
		}
		messages, err := syscall.ParseSocketControlMessage(oob[:oobn])
		if err != nil || len(messages) == 0 {
			continue
		}
		fds, err := syscall.ParseUnixRights(&messages[0])
		if err != nil || len(fds) == 0 {
			continue
		}
		file := os.NewFile(uintptr(fds[0]), "sticky-connection")
		conn, err := net.FileConn(file)
		file.Close()
		if err != nil {
			continue
		}
		return conn, nil
	}
}

func (l *handoffListener) Close() error   { return l.conn.Close() }
func (l *handoffListener) Addr() net.Addr { return l.conn.LocalAddr() }

// notify sends state (e.g. READY=1) to NOTIFY_SOCKET, as systemd's sd_notify does.
func notify(state string) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return
	}
	if path[0] == '@' {
		path = "\x00" + path[1:]
	}
	conn, err := net.Dial("unixgram", path)
	if err != nil {
		log.Printf("notify %s: %v", state, err)
		return
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		log.Printf("notify %s: %v", state, err)
	}
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("worker.go: ")
	sockets, err := listeners()
	if err != nil {
		log.Fatal(err)
	}
	slot := os.Getenv("STICKY_WORKER")
	server := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Lower case as the other examples send them (Header().Set would canonicalize).
		header := w.Header()
		header["x-sticky-worker"] = []string{slot}
		header["x-sticky-pid"] = []string{strconv.Itoa(os.Getpid())}
		header["x-sticky-runtime"] = []string{"go"}
		fmt.Fprintf(w, "worker: %s\n", slot)
	})}
	stopped := make(chan struct{})
	go func() {
		terms := make(chan os.Signal, 1)
		signal.Notify(terms, syscall.SIGTERM)
		<-terms
		notify("STOPPING=1")
		ctx, cancel := context.WithTimeout(context.Background(), gracePeriod)
		defer cancel()
		if err := server.Shutdown(ctx); err != nil {
			log.Printf("shutdown: %v", err)
		}
		close(stopped)
	}()
	var serving sync.WaitGroup
	for _, ln := range sockets {
		serving.Add(1)
		go func(ln net.Listener) {
			defer serving.Done()
			if err := server.Serve(ln); err != http.ErrServerClosed {
				log.Fatal(err)
			}
		}(ln)
	}
	// The sockets are listening (sticky opened them) and served from here on.
	notify("READY=1")
	serving.Wait()
	<-stopped
}
