// Command peer runs machinery v2 and paota v1 programs beside kiln for the
// interop tests (test/interop/test_interop.c). One binary, one mode per run,
// chosen by IOP_MODE:
//
//	machinery-send    a machinery producer sends iop.all_types; with
//	                  IOP_WAIT_RESULTS=1 it then reads the task's results
//	                  through machinery's MongoDB result backend
//	machinery-worker  a machinery worker runs iop.all_types, iop.retry and
//	                  iop.eta; with IOP_QUIT_AFTER_RETRY=1 it quits once it
//	                  has failed iop.retry and sent its retry
//	paota-send        a paota producer sends iop.all_types (JSON body)
//	paota-raw-send    a header-mode message (raw body, metadata in AMQP
//	                  headers) as paota's later releases send it
//	paota-worker      a paota worker runs iop.all_types, iop.retry and
//	                  iop.eta; with IOP_QUIT_AFTER_RETRY=1 it exits once its
//	                  retry waits in paota's delayed queue
//
// Both libraries are configured from the KILN_* variables the kiln programs
// of the same test read (KILN_BROKER_URL, KILN_EXCHANGE, KILN_EXCHANGE_TYPE,
// KILN_QUEUE, KILN_BINDING_KEY, KILN_MONGODB_URL, KILN_MONGODB_DATABASE), so
// each test shows one set of settings serving both sides.
//
// Every event is one line appended to IOP_OUT with a single write:
//
//	SENT <task> <uuid> <unix ms>
//	RUN <task> <uuid> <unix ms> <RetryCount> <RetryTimeout> <RetriesDone> <ETA unix ms or -1> <verdict>
//	RESULTS <task> <uuid> <unix ms> <verdict>
//
// where the verdict is "ok" or "bad: <why>". Failures to set up exit with
// status 1 and a message on stderr.
package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	taskAllTypes = "iop.all_types"
	taskRetry    = "iop.retry"
	taskETA      = "iop.eta"
)

func main() {
	var err error
	dieWithParent()
	switch mode := os.Getenv("IOP_MODE"); mode {
	case "machinery-send":
		err = machinerySend()
	case "machinery-worker":
		err = machineryWorker()
	case "paota-send":
		err = paotaSend()
	case "paota-raw-send":
		err = paotaRawSend()
	case "paota-worker":
		err = paotaWorker()
	default:
		err = fmt.Errorf("IOP_MODE=%q: want machinery-send, machinery-worker, "+
			"paota-send, paota-raw-send or paota-worker", mode)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "peer: %v\n", err)
		os.Exit(1)
	}
}

// need returns the variable's value or exits naming it.
func need(name string) string {
	v := os.Getenv(name)
	if v == "" {
		fmt.Fprintf(os.Stderr, "peer: %s is not set\n", name)
		os.Exit(1)
	}
	return v
}

var outMu sync.Mutex

// record appends one event line to IOP_OUT.
func record(kind, task, uuid string, fields ...string) {
	line := fmt.Sprintf("%s %s %s %d", kind, task, uuid, time.Now().UnixMilli())
	if len(fields) > 0 {
		line += " " + strings.Join(fields, " ")
	}
	line = strings.ReplaceAll(line, "\n", " ") + "\n"
	outMu.Lock()
	defer outMu.Unlock()
	f, err := os.OpenFile(need("IOP_OUT"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		fmt.Fprintf(os.Stderr, "peer: %v\n", err)
		os.Exit(1)
	}
	defer f.Close()
	if _, err := f.WriteString(line); err != nil {
		fmt.Fprintf(os.Stderr, "peer: %v\n", err)
		os.Exit(1)
	}
}

// recordRun writes a RUN line with the counters the task arrived with.
func recordRun(task, uuid string, retryCount, retryTimeout, retriesDone int,
	eta *time.Time, check error) {
	etaMs := int64(-1)
	if eta != nil {
		etaMs = eta.UnixMilli()
	}
	record("RUN", task, uuid, fmt.Sprint(retryCount), fmt.Sprint(retryTimeout),
		fmt.Sprint(retriesDone), fmt.Sprint(etaMs), verdict(check))
}

func verdict(err error) string {
	if err == nil {
		return "ok"
	}
	return "bad: " + err.Error()
}

// quitAfterRetry: the worker stops once it has sent one retry.
func quitAfterRetry() bool {
	return os.Getenv("IOP_QUIT_AFTER_RETRY") == "1"
}

// dieWithParent exits when the test that started this process (pid in
// KILN_IT_PARENT) is gone, so a killed test leaves no peer behind.
func dieWithParent() {
	want, err := strconv.Atoi(os.Getenv("KILN_IT_PARENT"))
	if err != nil {
		return
	}
	go func() {
		for os.Getppid() == want {
			time.Sleep(200 * time.Millisecond)
		}
		os.Exit(3)
	}()
}
