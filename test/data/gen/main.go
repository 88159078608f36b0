// Command gen writes kiln's test vectors with Go's own encoding/json (Go
// 1.26 here), so that the C codec is checked against what Go really writes.
//
//	go run . golden ../golden     machinery and paota messages
//	go run . floats > ../floats.txt  shortest float64/float32 texts
//
// The structs are copies of machinery v2's tasks.Signature and paota's
// schema.Signature, fields in upstream order (no json tags, as upstream).
package main

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand"
	"os"
	"strings"
	"time"
)

type Arg struct {
	Name  string      `bson:"name"`
	Type  string      `bson:"type"`
	Value interface{} `bson:"value"`
}

type Headers map[string]interface{}

// machinery v2 tasks.Signature
type MSignature struct {
	UUID                        string
	Name                        string
	RoutingKey                  string
	ETA                         *time.Time
	GroupUUID                   string
	GroupTaskCount              int
	Args                        []Arg
	Headers                     Headers
	Priority                    uint8
	Immutable                   bool
	RetryCount                  int
	RetryTimeout                int
	OnSuccess                   []*MSignature
	OnError                     []*MSignature
	ChordCallback               *MSignature
	BrokerMessageGroupId        string
	SQSReceiptHandle            string
	StopTaskDeletionOnError     bool
	IgnoreWhenTaskNotRegistered bool
}

// paota schema.Signature (RawArgs placed after Args)
type PSignature struct {
	UUID                        string
	Name                        string
	Args                        []Arg
	RawArgs                     json.RawMessage
	RoutingKey                  string
	Priority                    uint8
	RetryCount                  int
	RetryTimeout                int
	WaitTime                    int
	RetriesDone                 int
	TaskTimeOut                 int
	IgnoreWhenTaskNotRegistered bool
	CreatedAt                   *time.Time
	ETA                         *time.Time
}

func write(name string, v interface{}, extra string) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	s := string(b)
	if extra != "" {
		s = s[:len(s)-1] + "," + extra + "}"
	}
	if err := os.WriteFile(name, []byte(s+"\n"), 0644); err != nil {
		panic(err)
	}
}

func golden(dir string) {
	// 1. machinery: the README's add task
	write(dir+"/machinery_add.json", &MSignature{
		UUID: "task_0f4e3c2a-7b1d-4e8f-9a6b-2c5d8e1f3a70",
		Name: "add",
		Args: []Arg{{Type: "int64", Value: int64(1)}, {Type: "int64", Value: int64(1)}},
	}, "")

	// 2. machinery: every argument type
	all := []Arg{
		{Name: "b", Type: "bool", Value: true},
		{Type: "int", Value: int(math.MinInt64)},
		{Type: "int8", Value: int8(-128)},
		{Type: "int16", Value: int16(32767)},
		{Type: "int32", Value: int32(-2147483648)},
		{Type: "int64", Value: int64(math.MaxInt64)},
		{Type: "uint", Value: uint(math.MaxUint64)},
		{Type: "uint8", Value: uint8(255)},
		{Type: "uint16", Value: uint16(65535)},
		{Type: "uint32", Value: uint32(4294967295)},
		{Type: "uint64", Value: uint64(18446744073709551615)},
		{Type: "float32", Value: float32(0.1)},
		{Type: "float64", Value: float64(0.1)},
		{Name: "s", Type: "string", Value: "h\u00e9llo <b>&</b> \"q\" \\ \n\t\u2028 \U0001F600"},
		{Type: "[]bool", Value: []bool{true, false}},
		{Type: "[]int", Value: []int{-1, 0, 1}},
		{Type: "[]int8", Value: []int8{-128, 127}},
		{Type: "[]int16", Value: []int16{-32768, 32767}},
		{Type: "[]int32", Value: []int32{-2147483648, 2147483647}},
		{Type: "[]int64", Value: []int64{math.MinInt64, math.MaxInt64}},
		{Type: "[]uint", Value: []uint{0, math.MaxUint64}},
		{Type: "[]uint8", Value: []uint8{0, 1, 254, 255}},
		{Type: "[]uint16", Value: []uint16{0, 65535}},
		{Type: "[]uint32", Value: []uint32{0, 4294967295}},
		{Type: "[]uint64", Value: []uint64{0, 18446744073709551615}},
		{Type: "[]float32", Value: []float32{3.4028235e38, 1e-45, -0.5, 1e21, 16777216}},
		{Type: "[]float64", Value: []float64{1e21, 5e-324, 1.7976931348623157e308, 1e-7, 123.456, 100}},
		{Type: "[]string", Value: []string{"", "a", "<&>"}},
		{Type: "[]byte", Value: []byte("kiln\x00\xff")},
		{Name: "empty", Type: "[]int64", Value: []int64{}},
	}
	write(dir+"/machinery_all_types.json", &MSignature{
		UUID: "task_5a1c9e0b-3d2f-4c6a-8b7e-1f0a2d3c4b5e",
		Name: "every_type",
		Args: all,
	}, "")

	// 3. machinery: ETA, group, headers, callbacks, every option, and a key
	// from a newer producer (appended: Go never writes unknown keys).
	eta := time.Date(2031, 7, 14, 9, 26, 53, 589793000, time.FixedZone("", -(4*3600+30*60)))
	cb := &MSignature{UUID: "task_cb000000-0000-4000-8000-000000000001", Name: "on_ok",
		Args: []Arg{{Type: "string", Value: "done"}}}
	eb := &MSignature{UUID: "task_eb000000-0000-4000-8000-000000000002", Name: "on_err"}
	ch := &MSignature{UUID: "task_cc000000-0000-4000-8000-000000000003", Name: "chord", Immutable: true}
	write(dir+"/machinery_full.json", &MSignature{
		UUID:           "task_9b8a7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d",
		Name:           "resize",
		RoutingKey:     "images",
		ETA:            &eta,
		GroupUUID:      "group_1234",
		GroupTaskCount: 3,
		Args:           []Arg{{Name: "path", Type: "string", Value: "/tmp/a.png"}, {Name: "width", Type: "uint16", Value: uint16(640)}},
		Headers: Headers{"uber-trace-id": "abc:def:0:1", "attempt": 2, "big": uint64(18446744073709551615),
			"nested": map[string]interface{}{"z": []interface{}{1.5, "x", nil, true}, "a": map[string]interface{}{}}},
		Priority:                    9,
		Immutable:                   true,
		RetryCount:                  3,
		RetryTimeout:                10,
		OnSuccess:                   []*MSignature{cb},
		OnError:                     []*MSignature{eb},
		ChordCallback:               ch,
		BrokerMessageGroupId:        "grp",
		SQSReceiptHandle:            "rh",
		StopTaskDeletionOnError:     true,
		IgnoreWhenTaskNotRegistered: true,
	}, `"XTrace":{"id":123456789012345678901234567890,"deep":{"list":[1e400,-0.0,{"k":null}],"s":"\u003c"},"n":-1.5E-10}`)

	// 4. paota: a signature with typed args, as its publisher example sends
	created := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	write(dir+"/paota_simple.json", &PSignature{
		UUID:                        "task_3e2d1c0b-a9f8-4e7d-8c6b-5a4f3e2d1c0b",
		Name:                        "Print",
		Args:                        []Arg{{Type: "string", Value: `{"id":"1","name":"John Doe","email":"john.doe@example.com"}`}},
		RetryCount:                  10,
		IgnoreWhenTaskNotRegistered: true,
		CreatedAt:                   &created,
	}, "")

	// 5. paota: RawArgs with retry bookkeeping and an ETA
	created2 := time.Date(2025, 3, 1, 12, 0, 0, 123456789, time.UTC)
	eta2 := time.Date(2025, 3, 1, 12, 0, 5, 0, time.UTC)
	write(dir+"/paota_rawargs.json", &PSignature{
		UUID:         "task_7c6b5a4f-3e2d-4c1b-9a0f-8e7d6c5b4a3f",
		Name:         "USER_CREATED",
		RawArgs:      json.RawMessage(`{"event": "USER_CREATED", "data": {"user_id": 42, "name": "Ann <admin>", "score": 12345678901234567890}}`),
		RoutingKey:   "users",
		Priority:     2,
		RetryCount:   5,
		RetryTimeout: 3,
		WaitTime:     1,
		RetriesDone:  2,
		TaskTimeOut:  30,
		CreatedAt:    &created2,
		ETA:          &eta2,
	}, "")

	// 6. paota header mode: what buildHeadersFromSignature sends
	hdr := []string{
		"uuid: task_1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
		"task_name: USER_UPDATED",
		"retry_count: 3",
		"retry_timeout: 0",
		"timeout: 60",
		"wait_time: 0",
		"retries_done: 1",
		"ignore_if_unregistered: true",
		fmt.Sprintf("created_at: %d", created.Unix()),
		fmt.Sprintf("eta: %d", eta2.Unix()),
	}
	body := `{"event":"USER_UPDATED","data":{"user_id":7,"email":"a@b.c"}}`
	os.WriteFile(dir+"/paota_headers.txt", []byte(strings.Join(hdr, "\n")+"\n\n"+body+"\n"), 0644)
}

// floats prints "64 <bits> <json>" and "32 <bits> <json>" lines: random
// bit patterns, decimal-looking values and every power of two (where the
// rounding interval is lopsided).
func floats() {
	r := rand.New(rand.NewSource(7))
	emit64 := func(f float64) {
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return
		}
		b, _ := json.Marshal(f)
		fmt.Printf("64 %016x %s\n", math.Float64bits(f), b)
	}
	emit32 := func(f float32) {
		if math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) {
			return
		}
		b, _ := json.Marshal(f)
		fmt.Printf("32 %08x %s\n", math.Float32bits(f), b)
	}
	for i := 0; i < 500; i++ {
		emit64(math.Float64frombits(r.Uint64()))
		emit32(math.Float32frombits(r.Uint32()))
	}
	for i := 0; i < 150; i++ {
		emit64(float64(r.Intn(2000000)) / 1000)
		emit64(r.Float64() * math.Pow(10, float64(r.Intn(44)-22)))
		emit32(float32(r.Float64() * math.Pow(10, float64(r.Intn(24)-12))))
	}
	for e := -1074; e <= 1023; e++ {
		emit64(math.Ldexp(1, e))
	}
	for e := -149; e <= 127; e++ {
		emit32(float32(math.Ldexp(1, e)))
	}
	for _, f := range []float64{0, math.Copysign(0, -1), 1e21, 1e-6, 9.999999999999999e20, 1e21 - 65536, 0.000001, 0.0000009999999999999999, math.MaxFloat64, math.SmallestNonzeroFloat64} {
		emit64(f)
	}
	for _, f := range []float32{0, 1e21, 1e-6, 9.9999998e20, math.MaxFloat32, math.SmallestNonzeroFloat32, 16777217} {
		emit32(f)
	}
}

func main() {
	if len(os.Args) >= 3 && os.Args[1] == "golden" {
		golden(os.Args[2])
		return
	}
	if len(os.Args) >= 2 && os.Args[1] == "floats" {
		floats()
		return
	}
	fmt.Fprintln(os.Stderr, "usage: gen golden DIR | gen floats")
	os.Exit(2)
}
