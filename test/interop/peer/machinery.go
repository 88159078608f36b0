package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"reflect"
	"time"

	machinery "github.com/RichardKnop/machinery/v2"
	"github.com/RichardKnop/machinery/v2/backends/iface"
	mongobackend "github.com/RichardKnop/machinery/v2/backends/mongo"
	nullbackend "github.com/RichardKnop/machinery/v2/backends/null"
	amqpbroker "github.com/RichardKnop/machinery/v2/brokers/amqp"
	"github.com/RichardKnop/machinery/v2/config"
	eagerlock "github.com/RichardKnop/machinery/v2/locks/eager"
	"github.com/RichardKnop/machinery/v2/tasks"
)

// machineryServer builds a server on the test's names. The result backend
// is MongoDB when KILN_MONGODB_URL is set (the same database kiln's store
// writes), else none.
func machineryServer() (*machinery.Server, error) {
	cnf := &config.Config{
		Broker:          need("KILN_BROKER_URL"),
		DefaultQueue:    need("KILN_QUEUE"),
		ResultsExpireIn: 3600,
		NoUnixSignals:   true,
		AMQP: &config.AMQPConfig{
			Exchange:     need("KILN_EXCHANGE"),
			ExchangeType: need("KILN_EXCHANGE_TYPE"),
			// With a direct exchange machinery's producer declares a queue
			// named after the routing key, which is the binding key: the
			// tests give both the queue's name (see the README).
			BindingKey:    need("KILN_BINDING_KEY"),
			PrefetchCount: 4,
		},
	}
	var backend iface.Backend = nullbackend.New()
	if url := os.Getenv("KILN_MONGODB_URL"); url != "" {
		cnf.ResultBackend = url
		cnf.MongoDB = &config.MongoDBConfig{Database: need("KILN_MONGODB_DATABASE")}
		var err error
		if backend, err = mongobackend.New(cnf); err != nil {
			return nil, err
		}
	}
	return machinery.NewServer(cnf, amqpbroker.New(cnf), backend, eagerlock.New()), nil
}

func machineryArgs() []tasks.Arg {
	args := make([]tasks.Arg, len(allTypes))
	for i, a := range allTypes {
		args[i] = tasks.Arg{Name: a.name, Type: a.typ, Value: a.value}
	}
	return args
}

func machinerySend() error {
	server, err := machineryServer()
	if err != nil {
		return err
	}
	sig := &tasks.Signature{Name: taskAllTypes, Args: machineryArgs()}
	res, err := server.SendTask(sig)
	if err != nil {
		return err
	}
	record("SENT", taskAllTypes, sig.UUID)
	if os.Getenv("IOP_WAIT_RESULTS") != "1" {
		return nil
	}
	values, err := res.GetWithTimeout(30*time.Second, 20*time.Millisecond)
	if err == nil {
		err = checkResults(values)
	}
	if state := res.GetState(); err == nil && !state.IsSuccess() {
		err = fmt.Errorf("state %s", state.State)
	}
	record("RESULTS", taskAllTypes, sig.UUID, verdict(err))
	return nil
}

func checkResults(values []reflect.Value) error {
	if len(values) != len(kilnResults) {
		return fmt.Errorf("%d results, want %d", len(values), len(kilnResults))
	}
	for i, want := range kilnResults {
		if got := values[i].Interface(); !reflect.DeepEqual(got, want) {
			return fmt.Errorf("result %d: got %T %#v, want %T %#v", i, got, got, want, want)
		}
	}
	return nil
}

// machineryAllTypes has one parameter per type; machinery converts each
// argument to its parameter's type.
func machineryAllTypes(ctx context.Context, b bool, i int, i8 int8, i16 int16,
	i32 int32, i64 int64, u uint, u8 uint8, u16 uint16, u32 uint32, u64 uint64,
	f32 float32, f64 float64, s string, bs []bool, is []int, i8s []int8,
	i16s []int16, i32s []int32, i64s []int64, us []uint, u8s []uint8,
	u16s []uint16, u32s []uint32, u64s []uint64, f32s []float32,
	f64s []float64, ss []string, by []byte) (int64, uint64, float64, string, bool, error) {
	check := checkTyped([]interface{}{b, i, i8, i16, i32, i64, u, u8, u16,
		u32, u64, f32, f64, s, bs, is, i8s, i16s, i32s, i64s, us, u8s, u16s,
		u32s, u64s, f32s, f64s, ss, by})
	runFromContext(ctx, taskAllTypes, check)
	if check != nil {
		return 0, 0, 0, "", false, check
	}
	r1, r2, r3, r4, r5 := goResults()
	return r1, r2, r3, r4, r5, nil
}

func runFromContext(ctx context.Context, task string, check error) {
	sig := tasks.SignatureFromContext(ctx)
	if sig == nil {
		recordRun(task, "?", 0, 0, 0, nil, errors.New("no signature in the context"))
		return
	}
	recordRun(task, sig.UUID, sig.RetryCount, sig.RetryTimeout, 0, sig.ETA, check)
}

func machineryWorker() error {
	server, err := machineryServer()
	if err != nil {
		return err
	}
	retried := make(chan struct{}, 1)
	err = server.RegisterTasks(map[string]interface{}{
		taskAllTypes: machineryAllTypes,
		// Fails, so machinery retries it with its counters moved on.
		taskRetry: func(ctx context.Context) error {
			runFromContext(ctx, taskRetry, nil)
			select {
			case retried <- struct{}{}:
			default:
			}
			return errors.New("failing on purpose, to be retried")
		},
		taskETA: func(ctx context.Context) error {
			runFromContext(ctx, taskETA, nil)
			return nil
		},
	})
	if err != nil {
		return err
	}
	worker := server.NewWorker("iop-machinery", 2)
	errs := make(chan error, 1)
	worker.LaunchAsync(errs)
	if !quitAfterRetry() {
		return <-errs
	}
	select {
	case err := <-errs:
		return err
	case <-retried:
	}
	// Quit waits for the tasks being processed: the retry is sent and the
	// original delivery acked when it returns.
	worker.Quit()
	return nil
}
