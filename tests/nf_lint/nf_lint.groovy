// Parse and analyze Nextflow scripts (.nf) and configs (.config) with Nextflow's own
// parser (nf-lang ScriptParser / ConfigParser), as `nextflow lint` does.
// Usage: java -cp language-server-all.jar groovy.ui.GroovyMain nf_lint.groovy FILE...
// Prints one line per problem: `ERROR file:line:col: message` (or WARN), then a
// summary line; exits 1 when any error was found.
import nextflow.config.control.ConfigParser
import nextflow.script.control.ScriptParser
import org.codehaus.groovy.control.SourceUnit
import org.codehaus.groovy.control.messages.SyntaxErrorMessage
import org.codehaus.groovy.control.messages.WarningMessage
import org.codehaus.groovy.syntax.SyntaxException

def scriptParser = new ScriptParser()
def configParser = new ConfigParser()
List<SourceUnit> units = []
for (String name : args) {
    def file = new File(name)
    if (!file.exists()) {
        println "ERROR ${name}:0:0: no such file"
        continue
    }
    units << (name.endsWith('.nf') ? scriptParser.parse(file) : configParser.parse(file))
}
scriptParser.analyze()
configParser.analyze()

int errors = 0
int warnings = 0
for (SourceUnit unit : units) {
    def collector = unit.getErrorCollector()
    for (def message : (collector.getErrors() ?: [])) {
        errors++
        if (message instanceof SyntaxErrorMessage) {
            SyntaxException cause = message.getCause()
            println "ERROR ${unit.getName()}:${cause.getStartLine()}:${cause.getStartColumn()}: ${cause.getOriginalMessage()}"
        } else {
            def out = new StringWriter()
            message.write(new PrintWriter(out))
            println "ERROR ${unit.getName()}:0:0: ${out.toString().trim()}"
        }
    }
    for (WarningMessage warning : (collector.getWarnings() ?: [])) {
        warnings++
        def token = warning.getContext()?.getRoot()
        def line = token ? token.getStartLine() : 0
        def col = token ? token.getStartColumn() : 0
        println "WARN ${unit.getName()}:${line}:${col}: ${warning.getMessage()}"
    }
}
println "nf_lint: ${units.size()} files, ${errors} errors, ${warnings} warnings"
System.exit(errors ? 1 : 0)
