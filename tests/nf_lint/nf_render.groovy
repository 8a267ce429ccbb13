// Render Nextflow process blocks the way Nextflow does: the script:/stub: block of a
// process is evaluated as Groovy with the task's variables bound, and its input:/output:
// declarations are evaluated to learn the declared names.
// Server mode: one JSON request per stdin line, one JSON answer per stdout line.
//   request: {"file": "modules/local/x/main.nf", "process": "X",
//             "binding": {...} or null, "block": "script" | "stub"}
//   answer:  {"inputs": [...], "outputs": [...], "script": "..."} or {"error": "..."}
// A list value in the binding renders space-separated, as Nextflow stages file lists.
import groovy.json.JsonOutput
import groovy.json.JsonSlurper
import nextflow.script.ast.ProcessNodeV1
import nextflow.script.control.ScriptParser
import org.codehaus.groovy.ast.stmt.BlockStatement
import org.codehaus.groovy.ast.stmt.Statement

// Not a List: Groovy would render a List in a GString as [a, b].
class FileList {
    final List items
    FileList(List items) { this.items = items }
    int size() { items.size() }
    Iterator iterator() { items.iterator() }
    String toString() { items.join(' ') }
}

// Unknown names evaluate to their own name (`emit: shards`, `path(fasta)` in inputs).
class LenientBinding extends Binding {
    LenientBinding(Map m) { super(m) }
    Object getVariable(String name) { hasVariable(name) ? super.getVariable(name) : name }
}

static String slice(List<String> lines, Statement s) {
    int l0 = s.getLineNumber(), c0 = s.getColumnNumber()
    int l1 = s.getLastLineNumber(), c1 = s.getLastColumnNumber()
    if (l0 < 1) return null
    if (l0 == l1) return lines[l0 - 1].substring(c0 - 1, c1 - 1)
    def out = [lines[l0 - 1].substring(c0 - 1)]
    for (int i = l0; i < l1 - 1; i++) out << lines[i]
    out << lines[l1 - 1].substring(0, c1 - 1)
    return out.join('\n')
}

static List<Statement> statements(Statement s) {
    s instanceof BlockStatement ? ((BlockStatement) s).getStatements() : (s ? [s] : [])
}

static Object wrap(Object v) {
    if (v instanceof List) return new FileList(v.collect { wrap(it) })
    if (v instanceof Map) return v.collectEntries { k, x -> [k, wrap(x)] }
    return v
}

static Map declare(String kind, Object[] a) {
    def opts = (a.length && a[0] instanceof Map) ? a[0] : [:]
    def rest = (a.length && a[0] instanceof Map) ? a.drop(1) : a
    if (kind == 'tuple') return [kind: kind, items: rest.toList(), opts: opts]
    def value = rest.length ? rest[0] : null
    return [kind: kind, value: value instanceof GString ? value.toString() : value, opts: opts]
}

static List evalDecls(List<String> lines, Statement block, Map values) {
    def binding = new LenientBinding(values)
    for (kind in ['val', 'path', 'file', 'env', 'tuple', 'eval', 'each']) {
        def k = kind
        binding.setVariable(k, { Object[] a -> declare(k, a) })
    }
    binding.setVariable('stdout', [kind: 'stdout'])
    def shell = new GroovyShell(binding)
    def texts = statements(block).collect { slice(lines, it) }.findAll { it != null }
    return texts.collect { shell.evaluate(it) }
}

def cache = [:]
def slurper = new JsonSlurper()
System.in.eachLine { line ->
    if (!line.trim()) return
    def answer
    try {
        def req = slurper.parseText(line)
        def file = new File(req.file)
        if (!cache.containsKey(req.file)) {
            def parser = new ScriptParser()
            def unit = parser.parse(file)
            if (unit.getErrorCollector().hasErrors()) throw new RuntimeException("${req.file}: parse errors")
            cache[req.file] = unit.getAST()
        }
        def ast = cache[req.file]
        def lines = file.readLines()
        ProcessNodeV1 proc = ast.getProcesses().find { it.getName() == req.process }
        if (!proc) throw new RuntimeException("${req.file}: no process ${req.process}")
        answer = [inputs: evalDecls(lines, proc.inputs, [:])]
        if (req.binding != null) {
            def values = wrap(req.binding)
            answer.outputs = evalDecls(lines, proc.outputs, values)
            def body = req.block == 'stub' ? proc.stub : proc.exec
            def text = statements(body).collect { slice(lines, it) }.join('\n')
            // Nextflow strips the common indentation of the rendered script (TaskRun)
            def rendered = new GroovyShell(new Binding(values)).evaluate(text).toString()
            answer.script = rendered.stripIndent(true)
        }
    } catch (Throwable e) {
        answer = [error: e.toString()]
    }
    println JsonOutput.toJson(answer)
    System.out.flush()
}
